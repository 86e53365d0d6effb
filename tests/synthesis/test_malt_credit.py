"""MALT credit assignment on hand-built generate-verify-refine trees: node values, the strict threshold, per-role
SFT sets and prompts, sibling-only DPO pairs under every pairs_per_node mode, seeds, dedupe, the datasets."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import pytest

from coral.conversation.protocols.generate_verify_refine import (
    generator_messages,
    refiner_messages,
    verifier_messages,
)
from coral.records import ConversationRecord, Turn
from coral.synthesis.formats import TRL_TRAIN, dataset_is_complete
from coral.synthesis.malt import (
    MaltSettings,
    build_malt_data,
    dataset_folder,
    node_values,
    write_malt_datasets,
)
from coral.tasks import get_task

SYSTEM = {"generator": "Solve it.", "verifier": "Check it.", "refiner": "Refine it."}
QUESTION = "What is 2 + 2?"
ANSWER_FORMAT = get_task("gsm8k").answer_instruction()
LEAF = {  # grade -> (belief, correct, error), as the protocol's context annotates a refiner
    "c": ("4", True, None),
    "w": ("5", False, None),
    "n": (None, False, None),  # no answer: worth 0
    "e": (None, None, "BackendError: boom"),  # errored: no value
    "u": ("4", None, None),  # never graded: no value
}

Leaves = list[list[list[str]]]


def tree(leaves: Leaves, example_id: str = "q1", sample_index: int = 0,
         texts: dict[tuple[int, ...], str] | None = None, prefix: str = "") -> ConversationRecord:
    """A G->V->R tree numbered as the protocol numbers it (all generators, then verifiers, then refiners).

    ``leaves[g][v][r]`` is refiner r's grade under critique v of answer g. A node's text is its coordinates
    (``g0``, ``v0.1``, ``r0.1.2``, after ``prefix``) unless ``texts`` names another for those coordinates.
    """
    texts = texts or {}
    turns = [Turn(index=0, speaker="question", text=f"{QUESTION} ({example_id})", generated=False, role="question")]

    def add(role: str, parent: int, coordinates: tuple[int, ...], grade: str = "w") -> int:
        belief, correct, error = LEAF[grade] if role == "refiner" else (None, None, None)
        index = len(turns)
        name = prefix + role[0] + ".".join(map(str, coordinates))
        turns.append(Turn(index=index, speaker=role, text=texts.get(coordinates, name), seed=100 + index,
                          belief=belief, correct=correct, error=error, role=role, round=coordinates[0],
                          parent=parent, carries_answer=role != "verifier"))
        return index

    generators = [add("generator", 0, (g,)) for g in range(len(leaves))]
    verifiers = {(g, v): add("verifier", generators[g], (g, v)) for g, critiques in enumerate(leaves)
                 for v in range(len(critiques))}
    for g, critiques in enumerate(leaves):
        for v, refinements in enumerate(critiques):
            for r, grade in enumerate(refinements):
                add("refiner", verifiers[(g, v)], (g, v, r), grade)
    return ConversationRecord(example_id=example_id, sample_index=sample_index, task="gsm8k", run_seed=7,
                              config_hash="h", protocol="generate_verify_refine",
                              agents=dict.fromkeys(SYSTEM, "m"), turns=turns, stop_reason="completed",
                              max_turns=len(turns) - 1, gold="4", system_prompts=dict(SYSTEM))


def values_by_text(record: ConversationRecord) -> dict[str, Fraction]:
    return {record.turns[index].text: value for index, value in node_values(record).items()}


def parents_by_text(records: list[ConversationRecord]) -> dict[str, tuple[str, int]]:
    """Node text -> (example, parent index): which sibling group a text belongs to."""
    return {turn.text: (record.example_id, turn.parent) for record in records for turn in record.turns
            if turn.parent is not None}


# ---- node values and the threshold ---------------------------------------------------------------------------


def test_leaf_verifier_and_generator_values_are_means_of_their_children() -> None:
    record = tree([[["c", "c", "w"], ["c", "w", "w"], ["c", "c", "c"]],
                   [["w", "w", "w"], ["n", "c", "w"], ["c", "c", "n"]]])
    values = values_by_text(record)
    assert values["r0.0.0"] == 1 and values["r0.0.2"] == 0 and values["r1.1.0"] == 0  # "n": no answer is wrong
    assert [values[f"v0.{v}"] for v in range(3)] == [Fraction(2, 3), Fraction(1, 3), Fraction(1)]
    assert [values[f"v1.{v}"] for v in range(3)] == [Fraction(0), Fraction(1, 3), Fraction(2, 3)]
    assert values["g0"] == Fraction(6, 9)  # (2/3 + 1/3 + 1) / 3: 6 of 9 leaves
    assert values["g1"] == Fraction(3, 9)


def test_errored_and_ungraded_refiners_have_no_value_and_do_not_count_in_the_mean() -> None:
    record = tree([[["c", "e", "w"], ["e", "u", "e"]], [["c", "c"]]])
    values = values_by_text(record)
    assert "r0.0.1" not in values and "r0.1.1" not in values
    assert values["v0.0"] == Fraction(1, 2)  # 1 of the 2 valued refiners
    assert "v0.1" not in values  # no valued child: no value, not 0
    assert values["g0"] == Fraction(1, 2)  # the mean over its one valued verifier
    assert values["g1"] == 1


def test_threshold_is_strict_two_of_three_passes_one_of_three_fails() -> None:
    record = tree([[["c", "c", "w"], ["c", "w", "w"], ["w", "w", "w"]]])
    data = build_malt_data([record], MaltSettings())
    kept = {example.target for example in data["verifier"].examples}
    assert kept == {"v0.0"}  # 2/3 > 0.5; 1/3 and 0 are not
    assert data["verifier"].nodes == {"nodes": 3, "valued": 3, "positive": 1, "negative": 2,
                                      "values": {"0": 1, "1/3": 1, "2/3": 1}}


def test_generator_needs_five_of_nine_leaves() -> None:
    five = [["c", "c", "c"], ["c", "c", "w"], ["w", "w", "w"]]  # 3 + 2 + 0 = 5 of 9
    four = [["c", "c", "c"], ["c", "w", "w"], ["w", "w", "w"]]  # 3 + 1 + 0 = 4 of 9
    record = tree([five, four, five])
    values = values_by_text(record)
    assert (values["g0"], values["g1"]) == (Fraction(5, 9), Fraction(4, 9))
    data = build_malt_data([record], MaltSettings())
    assert sorted(example.target for example in data["generator"].examples) == ["g0", "g2"]
    assert data["generator"].nodes["values"] == {"4/9": 1, "5/9": 2}


def test_a_value_of_exactly_one_half_is_negative_and_the_threshold_is_configurable() -> None:
    record = tree([[["c", "w"], ["c", "c"]]])  # n = 2: verifier values 1/2 and 1
    assert {e.target for e in build_malt_data([record], MaltSettings())["verifier"].examples} == {"v0.1"}
    low = build_malt_data([record], MaltSettings(threshold=0.4))
    assert {e.target for e in low["verifier"].examples} == {"v0.0", "v0.1"}
    with pytest.raises(ValueError, match="threshold"):
        MaltSettings(threshold=1.0)
    with pytest.raises(ValueError, match="pairs_per_node"):
        MaltSettings(pairs_per_node=0)


def test_without_a_verifier_a_generator_is_the_mean_of_its_refiners() -> None:
    """The G+R ablation: refiners answer the generator directly."""
    turns = [Turn(index=0, speaker="question", text=QUESTION, generated=False, role="question"),
             Turn(index=1, speaker="generator", text="g0", seed=1, role="generator", round=0, parent=0)]
    for index, grade in enumerate("ccw", start=2):
        belief, correct, _ = LEAF[grade]
        turns.append(Turn(index=index, speaker="refiner", text=f"r{index}", seed=index, belief=belief,
                          correct=correct, role="refiner", round=0, parent=1))
    record = ConversationRecord(example_id="q", sample_index=0, task="gsm8k", run_seed=7, config_hash="h",
                                protocol="generate_verify_refine", agents={"generator": "m", "refiner": "m"},
                                turns=turns, stop_reason="completed", max_turns=4, gold="4",
                                system_prompts=dict(SYSTEM))
    assert node_values(record)[1] == Fraction(2, 3)
    refiner = build_malt_data([record], MaltSettings())["refiner"].examples
    assert {e.prompt[-1]["content"] for e in refiner} == {
        refiner_messages("Refine it.", QUESTION, "g0", "", ANSWER_FORMAT)[-1]["content"]}


# ---- SFT sets ------------------------------------------------------------------------------------------------


def test_sft_sets_hold_the_positive_nodes_of_each_role_with_the_prompt_that_role_saw() -> None:
    record = tree([[["c", "c", "w"], ["w", "w", "w"]], [["w", "w", "w"], ["w", "c", "w"]]])
    question = record.turns[0].text
    data = build_malt_data([record], MaltSettings())
    examples = {role: {(json.dumps(e.prompt), e.target) for e in data[role].examples} for role in data}
    assert examples["generator"] == set()  # g0 = 2/6 = 1/3, g1 = 1/6
    assert examples["verifier"] == {(json.dumps(verifier_messages("Check it.", question, "g0")), "v0.0")}
    assert examples["refiner"] == {
        (json.dumps(refiner_messages("Refine it.", question, "g0", "v0.0", ANSWER_FORMAT)), "r0.0.0"),
        (json.dumps(refiner_messages("Refine it.", question, "g0", "v0.0", ANSWER_FORMAT)), "r0.0.1"),
        (json.dumps(refiner_messages("Refine it.", question, "g1", "v1.1", ANSWER_FORMAT)), "r1.1.1"),
    }
    assert data["generator"].sft["no_examples_because"] == (
        "no generator node is positive: 0 positive, 2 negative of 2 valued generator nodes (value > 0.5 is "
        "positive; values: 1/6: 1, 1/3: 1)")
    winner = tree([[["c", "c"], ["c", "w"]]])
    [generated] = build_malt_data([winner], MaltSettings())["generator"].examples
    assert (generated.prompt, generated.target) == (generator_messages("Solve it.", winner.turns[0].text,
                                                                       ANSWER_FORMAT), "g0")
    assert (generated.seed, generated.origin.turn, generated.origin.speaker) == (101, 1, "generator")


def test_sft_drops_a_repeated_prompt_and_target() -> None:
    """Two critiques of one answer with the same text, both positive: one example."""
    record = tree([[["c", "c"], ["c", "c"]]], texts={(0, 1): "v0.0"})
    verifier = build_malt_data([record], MaltSettings())["verifier"]
    assert [e.target for e in verifier.examples] == ["v0.0"]
    assert verifier.sft["examples_possible"] == 2 and verifier.sft["dropped"] == {"duplicate": 1}


# ---- DPO pairs -----------------------------------------------------------------------------------------------

MIXED = [[["c", "c", "w"], ["w", "w", "w"], ["c", "c", "c"]],  # v: 2/3 0 1 -> g0 = 5/9
         [["c", "w", "w"], ["c", "c", "w"], ["w", "w", "w"]],  # v: 1/3 2/3 0 -> g1 = 3/9
         [["c", "c", "c"], ["c", "c", "c"], ["c", "w", "w"]]]  # v: 1 1 1/3 -> g2 = 7/9
POSSIBLE = {"generator": 2 * 1,  # one question: g0, g2 positive x g1
            "verifier": 2 * 1 + 1 * 2 + 2 * 1,
            "refiner": 2 * 1 + 0 + 0 + 1 * 2 + 2 * 1 + 0 + 0 + 0 + 1 * 2}
PARENTS_WITH_BOTH = {"generator": 1, "verifier": 3, "refiner": 4}


@pytest.mark.parametrize("pairs_per_node", ["all", 1, 2])
def test_pairs_are_between_siblings_only_under_every_mode(pairs_per_node: Literal["all"] | int) -> None:
    records = [tree(MIXED, "q1", prefix="q1:"), tree(MIXED, "q2", prefix="q2:")]
    data = build_malt_data(records, MaltSettings(pairs_per_node=pairs_per_node))
    parent = parents_by_text(records)
    values = {**values_by_text(records[0]), **values_by_text(records[1])}
    for role, role_data in data.items():
        for pair in role_data.pairs:
            assert parent[pair.chosen] == parent[pair.rejected]  # same record, same parent
            assert values[pair.chosen] > Fraction(1, 2) >= values[pair.rejected]
            assert pair.gap == round(float(values[pair.chosen] - values[pair.rejected]), 6)
        possible = 2 * POSSIBLE[role]
        cap = {"all": None, 1: 1, 2: 2}[pairs_per_node]
        per_parent = Counter(parent[pair.chosen] for pair in role_data.pairs)
        assert role_data.dpo["pairs_possible"] == possible
        assert len(per_parent) == 2 * PARENTS_WITH_BOTH[role]
        assert cap is None or max(per_parent.values()) <= cap
        dropped = role_data.dpo["dropped"]
        assert len(role_data.pairs) + sum(dropped.values()) == possible
    expected = {"all": (4, 12, 16), 1: (2, 6, 8), 2: (4, 12, 16)}[pairs_per_node]
    assert tuple(len(data[role].pairs) for role in ("generator", "verifier", "refiner")) == expected


@pytest.mark.parametrize(("pairs_per_node", "kept"), [("all", 4), (3, 3), (1, 1)])
def test_pairs_per_node_caps_each_parent_with_a_seeded_choice(pairs_per_node: Literal["all"] | int, kept: int) -> None:
    """Four refinements of one critique, 2 right x 2 wrong: 4 possible pairs, of which the cap keeps k."""
    refiner = build_malt_data([tree([[["c", "w", "c", "w"]]])], MaltSettings(pairs_per_node=pairs_per_node))["refiner"]
    assert len(refiner.pairs) == kept and refiner.dpo["dropped"]["node_cap"] == 4 - kept
    assert {(p.chosen, p.rejected) for p in refiner.pairs} <= {(c, w) for c in ("r0.0.0", "r0.0.2")
                                                               for w in ("r0.0.1", "r0.0.3")}


def test_pairs_and_examples_are_the_same_for_the_same_seed_in_any_record_order() -> None:
    records = [tree(MIXED, f"q{i}", prefix=f"q{i}:") for i in range(4)]
    first = build_malt_data(records, MaltSettings(pairs_per_node=1, seed=3))
    again = build_malt_data(records[::-1], MaltSettings(pairs_per_node=1, seed=3))
    other = build_malt_data(records, MaltSettings(pairs_per_node=1, seed=4))
    for role in first:
        assert first[role].pairs == again[role].pairs
        assert first[role].examples == again[role].examples
    assert [p.rejected for p in first["refiner"].pairs] != [p.rejected for p in other["refiner"].pairs]


def test_identical_texts_never_pair_and_repeated_pairs_are_dropped() -> None:
    same = tree([[["c", "c", "w"]]], "q1", texts={(0, 0, 2): "r0.0.0"})  # a wrong refinement worded as a right one
    repeat = tree([[["c", "w"]]], "q1", sample_index=1)  # a second tree of q1 repeating (r0.0.0, r0.0.1)
    twin = tree([[["c", "w"]]], "q1", sample_index=2)
    refiner = build_malt_data([same, repeat, twin], MaltSettings())["refiner"]
    assert {(p.chosen, p.rejected) for p in refiner.pairs} == {("r0.0.1", "r0.0.0"), ("r0.0.0", "r0.0.1")}
    assert refiner.dpo["dropped"] == {"same_text": 1, "duplicate": 1, "node_cap": 0}


def test_no_negative_nodes_is_said_with_the_counts() -> None:
    data = build_malt_data([tree([[["c", "c"], ["c", "c"]]])], MaltSettings())
    assert data["refiner"].dpo["no_pairs_because"] == (
        "no refiner node is negative: 4 positive, 0 negative of 4 valued refiner nodes (value > 0.5 is positive; "
        "values: 1: 4)")
    assert data["verifier"].dpo["pairs"] == 0 and data["verifier"].sft["examples"] == 2


# ---- datasets ------------------------------------------------------------------------------------------------


def test_datasets_are_written_per_role_and_kind_with_counts_and_settings(tmp_path: Path) -> None:
    settings = MaltSettings(pairs_per_node=1, seed=5)
    written = write_malt_datasets([tree(MIXED)], tmp_path, settings, "SmolLM2-135M-Instruct",
                                  [{"folder": "results/x", "records": 1}])
    assert {name: counts.get("examples", counts.get("pairs")) for name, counts in written.items()} == {
        "generator/sft": 2, "generator/dpo": 1, "verifier/sft": 5, "verifier/dpo": 3,
        "refiner/sft": 15, "refiner/dpo": 4}
    for role in ("generator", "verifier", "refiner"):
        for kind in ("sft", "dpo"):
            folder = dataset_folder(tmp_path, role, kind)
            assert dataset_is_complete(folder, settings)
            assert not dataset_is_complete(folder, MaltSettings(seed=6))
            info = json.loads((folder / "settings.json").read_text())
            assert (info["role"], info["kind"], info["settings"]["pairs_per_node"]) == (role, kind, 1)
    rows = [json.loads(line) for line in (tmp_path / "verifier" / "dpo" / TRL_TRAIN).read_text().splitlines()]
    assert all(row["prompt"][-1]["content"].startswith("Question:") for row in rows)
    counts: dict[str, Any] = json.loads((tmp_path / "verifier" / "dpo" / "counts.json").read_text())
    assert counts["nodes"]["positive"] == 5 and counts["nodes"]["negative"] == 4 and counts["pairs_possible"] == 6
