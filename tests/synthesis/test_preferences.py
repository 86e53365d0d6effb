"""DPO pairs from hand-built tree records: same-prefix pairs only, caps, seeds, dedupe, every filter and penalty."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coral.conversation.protocols import agent_view
from coral.records import ConversationRecord, Turn
from coral.synthesis.preferences import (
    PAIR_FILTERS,
    PairSettings,
    PreferencePair,
    build_pairs,
)

SYSTEM = {"student": "You are the student.", "teacher": "You are the teacher."}
GRADES = {  # grade -> (belief, correct, error, extraction_error), as the conversation context annotates them
    "c": ("A", True, None, None),
    "w": ("B", False, None, None),
    "n": (None, False, None, None),  # committed to no answer
    "u": (None, False, None, "judge timed out"),  # extraction failed: correctness unknown
    "g": ("A", None, None, None),  # never graded
    "e": (None, None, "BackendError: boom", None),
}

Spec = str | tuple[str, str] | dict[str, Any]


def candidate(spec: Spec, index: int, speaker: str, position: int, tree_name: str) -> Turn:
    """A spec is a grade letter, (grade, text), or a dict with ``grade`` and optional ``text``, ``agreement``."""
    if isinstance(spec, str):
        spec = {"grade": spec}
    elif isinstance(spec, tuple):
        spec = dict(zip(("grade", "text"), spec))
    belief, correct, error, extraction_error = GRADES[spec["grade"]]
    text = "" if error else spec.get("text", f"{spec['grade']}: {tree_name}, level {index}, candidate {position}")
    return Turn(index=index, speaker=speaker, text=text, seed=1000 * index + position, belief=belief, correct=correct,
                error=error, extraction_error=extraction_error, agreement=spec.get("agreement", False))


def tree(*levels: list[Spec], example_id: str = "p1", sample_index: int = 0, task: str = "math") -> ConversationRecord:
    """A tree record: turn 0 is the student's question; level i's first spec continued, the rest are siblings."""
    turns = [Turn(index=0, speaker="student", text=f"question {example_id}", generated=False)]
    for index, specs in enumerate(levels, start=1):
        speaker = "teacher" if index % 2 else "student"
        path, *others = [candidate(spec, index, speaker, position, f"{example_id}/{sample_index}")
                          for position, spec in enumerate(specs)]
        path.siblings = others
        turns.append(path)
    return ConversationRecord(example_id=example_id, sample_index=sample_index, task=task, run_seed=0,
                              config_hash="h", protocol="coral", agents={"student": "m", "teacher": "m"},
                              turns=turns, stop_reason="max_turns", max_turns=len(levels), gold="A",
                              system_prompts=dict(SYSTEM))


def build(records: list[ConversationRecord], **settings: Any) -> tuple[list[PreferencePair], dict[str, Any]]:
    """build_pairs, also checking that every possible pair is either written or counted under one filter."""
    pairs, counts = build_pairs(records, PairSettings(**settings))
    assert counts["pairs"] == len(pairs)
    assert counts["pairs_possible"] == len(pairs) + sum(counts["dropped"].values())
    assert set(counts["dropped"]) == set(PAIR_FILTERS)
    return pairs, counts


def signature(pairs: list[PreferencePair]) -> list[tuple[str, int, int, str, str]]:
    return [(p.origin.example_id, p.origin.sample_index, p.origin.turn, p.chosen, p.rejected) for p in pairs]


def level_candidates(record: ConversationRecord, index: int) -> list[Turn]:
    return [record.turns[index], *record.turns[index].siblings]


def test_pairs_contrast_candidates_of_one_prefix_only() -> None:
    records = [
        tree(["w", "c", "w"], ["c", "w", "n"], ["c", "c", "w"], example_id="p1", sample_index=0),
        tree(["c", "w", "w"], ["w", "c"], example_id="p1", sample_index=1),
        tree(["c", "w"], ["c", "w", "w"], example_id="p2"),
    ]
    pairs, counts = build(records, max_pairs_per_level=None, max_pairs_per_problem=None)
    assert counts["levels"] == 7 and counts["problems"] == 2
    assert counts["pairs_possible"] == 2 + 2 + 2 + 2 + 1 + 1 + 2 == len(pairs)
    by_tree = {(r.example_id, r.sample_index): r for r in records}
    for pair in pairs:
        record = by_tree[(pair.origin.example_id, pair.origin.sample_index)]
        level = level_candidates(record, pair.origin.turn)
        speaker = record.turns[pair.origin.turn].speaker
        assert pair.origin.speaker == speaker
        assert pair.prompt == agent_view(SYSTEM[speaker], speaker, record.turns[: pair.origin.turn])
        assert pair.chosen in {t.text for t in level if t.correct}
        assert pair.rejected in {t.text for t in level if not t.correct}
        assert pair.prompt[-1]["role"] == "user"  # the partner's turn is the last thing the speaker saw


def test_level_and_problem_caps_hold() -> None:
    big = ["c", "c", "c", "w", "w", "w"]  # 9 possible pairs per level
    records = [tree(big, big, big, example_id="p1", sample_index=s) for s in range(3)]
    records.append(tree(big, example_id="p2"))
    pairs, counts = build(records, max_pairs_per_level=2, max_pairs_per_problem=None)
    per_level: dict[tuple[str, int, int], int] = {}
    for pair in pairs:
        key = (pair.origin.example_id, pair.origin.sample_index, pair.origin.turn)
        per_level[key] = per_level.get(key, 0) + 1
    assert len(per_level) == 10 and set(per_level.values()) == {2}
    assert counts["dropped"]["level_cap"] == 10 * 7

    pairs, counts = build(records, max_pairs_per_level=2, max_pairs_per_problem=5)
    assert sum(p.origin.example_id == "p1" for p in pairs) == 5
    assert sum(p.origin.example_id == "p2" for p in pairs) == 2
    assert counts["dropped"]["problem_cap"] == 18 - 5
    assert counts["per_problem"] == {"problems": 2, "with_examples": 2, "min": 2, "max": 5, "mean": 3.5,
                                     "median": 3.5, "at_cap": 1}


def test_paper_defaults() -> None:
    settings = PairSettings()
    assert (settings.max_pairs_per_level, settings.max_pairs_per_problem) == (2, 20)
    assert settings.no_belief_is_incorrect and settings.dedupe


def test_same_seed_same_pairs_and_record_order_does_not_matter() -> None:
    big = ["c", "c", "c", "w", "w", "w"]
    records = [tree(big, big, example_id=f"p{p}", sample_index=s) for p in range(3) for s in range(2)]
    first, _ = build(records, seed=3, max_pairs_per_problem=3)
    again, _ = build(list(reversed(records)), seed=3, max_pairs_per_problem=3)
    assert signature(first) == signature(again)
    others = [signature(build(records, seed=seed, max_pairs_per_problem=3)[0]) for seed in range(4, 9)]
    assert any(other != signature(first) for other in others)
    assert any(sorted(other) != sorted(signature(first)) for other in others)  # a different choice, not just order


def test_adding_a_problem_leaves_other_problems_pairs_unchanged() -> None:
    big = ["c", "c", "w", "w"]
    base = [tree(big, big, example_id="p1"), tree(big, example_id="p2")]
    before, _ = build(base, max_pairs_per_level=1, max_pairs_per_problem=1)
    after, _ = build([*base, tree(big, example_id="p0")], max_pairs_per_level=1, max_pairs_per_problem=1)
    assert sorted(signature(before)) == sorted(s for s in signature(after) if s[0] != "p0")


def test_duplicate_pairs_are_dropped() -> None:
    # The reference's fixed sampling seed could make trees of one problem identical (reference 8.1.1).
    level = [("c", "right"), ("w", "wrong"), ("w", "wrong")]
    records = [tree(level, level, example_id="p1", sample_index=s) for s in range(3)]
    pairs, counts = build(records, max_pairs_per_level=None, max_pairs_per_problem=None)
    keys = [(json.dumps(p.prompt), p.chosen, p.rejected) for p in pairs]
    assert len(keys) == len(set(keys)) == 2  # one distinct pair per level (prompts differ by level)
    assert counts["dropped"]["duplicate"] == 3 * 2 * 2 - 2
    undeduped, counts = build(records, max_pairs_per_level=None, max_pairs_per_problem=None, dedupe=False)
    assert len(undeduped) == 12 and counts["dropped"]["duplicate"] == 0


def test_errored_and_unknown_candidates_are_never_used() -> None:
    record = tree(
        ["c", ("w", "plainly wrong"), ("u", "extraction failed here"), ("g", "never graded"), "e"],
        [("c", "right again"), "e", "e"],
        ["e"],  # a path turn that errored (all candidates failed): the conversation ended there
    )
    pairs, counts = build([record], max_pairs_per_level=None)
    texts = {text for pair in pairs for text in (pair.chosen, pair.rejected)}
    assert {"extraction failed here", "never graded", ""}.isdisjoint(texts)
    assert [p.rejected for p in pairs] == ["plainly wrong"]
    assert counts["candidates"] == {"correct": 2, "incorrect": 1, "no_belief": 0, "errored": 4, "unknown": 2}


def test_no_belief_candidates_count_as_rejected_by_default() -> None:
    records = [tree([("c", "it is A"), ("n", "not sure yet")])]
    pairs, _ = build(records)
    assert [(p.chosen, p.rejected) for p in pairs] == [("it is A", "not sure yet")]
    pairs, counts = build(records, no_belief_is_incorrect=False)
    assert pairs == [] and counts["pairs_possible"] == 0


def test_agree_wrong_penalty_makes_caps_keep_agreeing_wrong_candidates() -> None:
    level = [("c", "A, because"), ("w", "B, I think"), {"grade": "w", "text": "I agree, B", "agreement": True}]
    records = [tree(level, example_id=f"p{i}") for i in range(12)]
    plain, _ = build(records, max_pairs_per_level=1)
    assert {p.rejected for p in plain} == {"B, I think", "I agree, B"}  # random without the penalty
    penalised, _ = build(records, max_pairs_per_level=1, agree_wrong_penalty=0.1)
    assert {p.rejected for p in penalised} == {"I agree, B"}
    assert {p.gap for p in penalised} == {1.1}


def test_length_penalty_makes_caps_prefer_short_chosen_and_long_rejected() -> None:
    level = [("c", "A."), ("c", "A, " + "since " * 30), ("w", "B."), ("w", "B, " + "since " * 30)]
    records = [tree(level, example_id=f"p{i}") for i in range(12)]
    plain, _ = build(records, max_pairs_per_level=1)
    assert len({(p.chosen, p.rejected) for p in plain}) > 1
    penalised, _ = build(records, max_pairs_per_level=1, length_penalty=0.1)
    assert {(p.chosen[:2], p.rejected[:2]) for p in penalised} == {("A.", "B,")}


def test_max_length_ratio_drops_pairs_with_a_much_longer_chosen() -> None:
    record = tree([("c", "A" * 100), ("w", "B" * 10), ("w", "B" * 60)])
    pairs, _ = build([record])
    assert len(pairs) == 2
    pairs, counts = build([record], max_length_ratio=2.0)
    assert [p.rejected for p in pairs] == ["B" * 60] and counts["dropped"]["length_ratio"] == 1


def test_identical_texts_never_form_a_pair() -> None:
    pairs, counts = build([tree([("c", "same words"), ("w", "same words"), ("w", "other")])])
    assert [p.rejected for p in pairs] == ["other"] and counts["dropped"]["same_text"] == 1


def test_difficulty_filter_keeps_problems_by_pass_rate() -> None:
    hard = tree(["c", "w", "w", "w"], example_id="hard")  # pass rate 0.25
    medium = tree(["c", "w"], example_id="medium")  # 0.5
    easy = tree(["c", "c", "c", "w"], example_id="easy")  # 0.75
    pairs, counts = build([hard, medium, easy], max_pairs_per_level=None, min_pass_rate=0.3, max_pass_rate=0.6)
    assert {p.origin.example_id for p in pairs} == {"medium"}
    assert counts["dropped"]["difficulty"] == 3 + 3 and counts["problems_kept"] == 1
    pairs, _ = build([hard, medium, easy], max_pairs_per_level=None)
    assert {p.origin.example_id for p in pairs} == {"hard", "medium", "easy"}


def test_a_record_without_the_speakers_system_prompt_fails_naming_it() -> None:
    record = tree(["c", "w"])
    record.system_prompts.pop("teacher")
    with pytest.raises(ValueError, match="system_prompts.*'teacher'"):
        build_pairs([record], PairSettings())


@pytest.mark.parametrize("bad", [{"max_pairs_per_level": 0}, {"max_pairs_per_problem": -1},
                                 {"length_penalty": -0.1}, {"max_length_ratio": 0},
                                 {"min_pass_rate": 0.8, "max_pass_rate": 0.2}])
def test_bad_settings_name_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="PairSettings"):
        PairSettings(**bad)
