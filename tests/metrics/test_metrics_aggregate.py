"""Aggregation over conversations, accuracy by turn, and the summary table."""

from __future__ import annotations

import json

import pytest

from coral.metrics import aggregate, summary_table
from coral.metrics.__main__ import main as metrics_cli


@pytest.fixture
def run(build):
    """Four conversations (gold A), correctness per generated turn in the comments."""
    return [
        build("A", "B", max_turns=2, example_id="r1"),  # t1 right, t2 wrong
        build("B", "A", {"belief": "A", "agreement": True}, example_id="r2"),  # wrong, right, right (agreed)
        build("A", {"error": "boom"}, example_id="r3"),  # t1 right, t2 failed to generate
        build("B", "C", max_turns=2, example_id="r4"),  # never right
    ]


def test_aggregate_corrected(run):
    metrics = aggregate(run)
    want = {
        "n_conversations": 4,
        # r2 only ends by agreement, and both agreeing turns (2 and 3) are right
        "agreement": 0.25,
        "agreement_correctness": 0.25,
        "conv_err": 0.25,  # r3
        "total_turns": 2.25,  # generated turns (2 + 3 + 2 + 2) / 4
        "ever_correct": 0.75,  # r1, r2, r3
        # last non-errored generated turn right: r1 no (B), r2 yes, r3 yes (t1), r4 no
        "final_success_rate": 0.5,
        "final_answer_accuracy": 0.5,  # last valid belief right: r1 no, r2 yes, r3 yes, r4 no
        # first right turn: r1 1, r2 2, r3 1, r4 None (excluded) -> (1 + 2 + 1) / 3
        "n_turns_to_success": 4 / 3,
        # persuasive: r2 turn 2 only (see test_s1): r2 1/3, others 0/2, 0/2 (r1, r4) and 0/1 (r3 without its
        # errored turn) -> (1/3) / 4
        "persuade_rate": 1 / 12,
        "assert_rate": 0.0,
        "persuasion_quality": 1.0,  # only r2 has a persuasive turn; the others are None, not 0
        "correct_persuade_rate": 1.0,
        # accuracy by turn among conversations with that turn generated without error
        "accuracy_turn_1": 0.5,  # r1 yes, r2 no, r3 yes, r4 no
        "accuracy_turn_2": 1 / 3,  # r1 no, r2 yes, r4 no (r3's turn 2 errored: not counted)
        "accuracy_turn_3": 1.0,  # r2 only
    }
    for name, value in want.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    # no assertive turn anywhere: the assert split is None in every conversation, so it is omitted
    assert "correct_assert_rate" not in metrics
    assert "accuracy_turn_4" not in metrics


def test_aggregate_compat(run):
    metrics = aggregate(run, compat=True)
    want = {
        "total_turns": 3.25,  # len(turns): (3 + 4 + 3 + 3) / 4
        "final_success_rate": 0.75,  # = ever_correct
        "n_turns_to_success": 1.5,  # r4 counts as max_turns 2: (1 + 2 + 1 + 2) / 4
        "persuade_rate": 1 / 12,  # r3 keeps its errored turn: 0/2; still (1/3) / 4
        # r3's errored turn 2 is "not sure yet": tok [U, A, U]; i=2: sp=U pp=A, A != U and U == U ->
        # assertive. r3 assert_rate 1/2, the others 0 -> 0.5 / 4
        "assert_rate": 0.125,
        "persuasion_quality": 0.25,  # r2 1.0, the others 0.0 (compat counts empty sets as 0)
        "unsure_assert_rate": 0.25,  # r3's assertive turn is unsure (1/1); others 0.0
        "t_len": 10.0,  # every teacher turn has 10 tokens
        "s_len": 7.5,  # students: r1, r2, r4 10 each; r3's only student turn errored -> 0.0; 30 / 4
    }
    for name, value in want.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name


def test_aggregate_omits_metrics_undefined_everywhere(build):
    metrics = aggregate([build({"error": "refused"})])
    for name in ("n_turns_to_success", "valid_answer_rate", "persuade_rate", "accuracy_turn_1"):
        assert name not in metrics
    assert (metrics["n_conversations"], metrics["conv_err"]) == (1, 1.0)
    assert aggregate([]) == {"n_conversations": 0}


def test_summary_table_order_and_format():
    metrics = {
        "zeta": 1.0,
        "agreement": 0.5,
        "agreement_correctness": 0.25,
        "accuracy_turn_10": 0.1,
        "accuracy_turn_2": 0.123456,
        "n_conversations": 4,
    }
    table = summary_table(metrics)
    assert table.splitlines() == [
        "metric                  value",
        "---------------------  ------",
        "agreement_correctness  0.2500",
        "agreement              0.5000",
        "accuracy_turn_2        0.1235",
        "accuracy_turn_10       0.1000",
        "n_conversations             4",
        "zeta                   1.0000",
    ]


def test_metrics_are_also_reported_per_group(build):
    # Two order-0 conversations (one ends in a correct agreement) and one order-1 conversation (wrong answer).
    agreed = build("A", {"belief": "A", "agreement": True}, example_id="a")
    silent = build(None, None, example_id="b")
    wrong = build("B", example_id="c")
    agreed.metadata = silent.metadata = {"groups": {"order": "0"}}
    wrong.metadata = {"groups": {"order": "1"}}
    result = aggregate([agreed, silent, wrong])
    assert result["n_conversations[order=0]"] == 2 and result["n_conversations[order=1]"] == 1
    assert result["agreement_correctness[order=0]"] == 0.5  # 1 of the 2 order-0 conversations
    assert result["final_answer_accuracy[order=0]"] == 0.5  # "A" correct; no belief counts as 0
    assert result["final_answer_accuracy[order=1]"] == 0.0


def test_a_conversation_that_raised_counts_as_errored(build, tmp_path, capsys):
    raised = build(example_id="boom")  # what the runner stores when a conversation raises: no turns at all
    raised.turns, raised.stop_reason = [], "error"
    fine = build("A", example_id="fine")
    for compat in (False, True):
        metrics = aggregate([raised, fine], compat=compat)
        assert (metrics["n_conversations"], metrics["conv_err"]) == (2, 0.5)
        assert metrics["final_answer_accuracy"] == 0.5 and metrics["total_turns"] == (1.0 if compat else 0.5)
    (tmp_path / "conversations.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in (raised, fine)))
    assert metrics_cli([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["conv_err"] == 0.5


def test_a_one_turn_run_summary_leaves_out_conversation_metrics(build):
    metrics = aggregate([build("A", max_turns=1, example_id="a"), build("B", max_turns=1, example_id="b")])
    shown = {line.split()[0] for line in summary_table(metrics, conversation=False).splitlines()[2:]}
    assert {"final_answer_accuracy", "conv_err", "valid_answer_rate", "n_conversations"} <= shown
    hidden = {"agreement", "agreement_correctness", "persuade_rate", "assert_rate", "accuracy_turn_1"}
    assert hidden <= set(metrics) and not hidden & shown
    assert hidden <= {line.split()[0] for line in summary_table(metrics).splitlines()[2:]}
