"""build_dpo on records that give no pairs says why (plain conversations, nothing correct, filters)."""

from __future__ import annotations

from pathlib import Path

from coral.records import ConversationRecord, Turn
from coral.store import ResultStore
from coral.synthesis.preferences import PairSettings, build_pairs
from finetuning.data_creation import build_dpo

MODEL = "SmolLM2-135M-Instruct"


def record(example_id: str, *levels: list[bool]) -> ConversationRecord:
    """One record; each level lists the correctness of its candidates (the first continued, the rest siblings)."""
    turns = [Turn(index=0, speaker="student", text=f"What is 2 + 2? {example_id}", generated=False)]
    for index, grades in enumerate(levels, start=1):
        speaker = "teacher" if index % 2 else "student"
        path, *siblings = [Turn(index=index, speaker=speaker, text=f"{example_id} {index} {n} {ok}", seed=n,
                                belief="4" if ok else "5", correct=ok) for n, ok in enumerate(grades)]
        path.siblings = siblings
        turns.append(path)
    return ConversationRecord(example_id=example_id, sample_index=0, task="math", run_seed=1, config_hash="h",
                              protocol="coral", agents={"student": MODEL, "teacher": MODEL}, turns=turns,
                              stop_reason="max_turns", max_turns=len(levels), gold="4",
                              system_prompts={"student": "s", "teacher": "t"})


def test_plain_conversations_are_named_as_the_reason(tmp_path: Path, capsys) -> None:
    store = ResultStore(tmp_path / "results")
    for example_id in ("p1", "p2"):
        store.append(record(example_id, [True], [False]))
    counts = build_dpo.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "dpo"), "--model", MODEL])
    assert counts["pairs"] == 0
    assert "not tree-sampled" in counts["no_pairs_because"]
    err = capsys.readouterr().err
    assert "build_dpo: no pairs: the records were not tree-sampled" in err and "--model.beam_size" in err


def test_each_missing_ingredient_is_named() -> None:
    def why(*records: ConversationRecord, **settings) -> str:
        pairs, counts = build_pairs(list(records), PairSettings(**settings))
        assert pairs == []
        return counts["no_pairs_because"]

    assert why() == "no records were read"
    assert why(record("p1", [False, False, False])).startswith("no candidate is correct (correct: 0, incorrect: 3")
    assert why(record("p1", [True, True], [False, False])).startswith("no prefix has both a correct and a rejectable")
    assert why(record("p1", [True, False]), max_pass_rate=0.4) == (
        "all 1 possible pairs were dropped by the filters (difficulty: 1)"
    )
    _, counts = build_pairs([record("p1", [True, False])], PairSettings())
    assert counts["pairs"] == 1 and "no_pairs_because" not in counts
