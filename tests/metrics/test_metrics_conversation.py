"""Per-conversation metrics on hand-made records; every expected number is derived in the comments."""

from __future__ import annotations

import pytest

from coral.metrics import conversation_metrics

SOCIAL_KEYS = {
    "persuade_rate",
    "assert_rate",
    "persuasion_quality",
    "correct_persuade_rate",
    "incorrect_persuade_rate",
    "unsure_persuade_rate",
    "correct_assert_rate",
    "incorrect_assert_rate",
    "unsure_assert_rate",
}
BASE_KEYS = {
    "conv_err",
    "total_turns",
    "len_student",
    "len_teacher",
    "conv_len",
    "rated_turns",
    "extractor_err_rate",
    "valid_answer_rate",
    "judge_rate",
    "agreement",
    "agreement_correctness",
    "ever_correct",
    "final_success_rate",
    "final_answer_accuracy",
    "n_turns_to_success",
}


def test_metric_names_carry_no_model_names(build):
    record = build("B", "A", {"belief": "A", "agreement": True})
    assert set(conversation_metrics(record)) == BASE_KEYS | SOCIAL_KEYS
    # compat adds the reference's teacher/student length aliases
    assert set(conversation_metrics(record, compat=True)) == BASE_KEYS | SOCIAL_KEYS | {"t_len", "s_len"}


def test_agreement_correctness_needs_both_agreeing_beliefs_correct(build):
    # ToM-style lenient grading: gold "kitchen"; the teacher's "in kitchen" was graded wrong, the student's
    # "kitchen" right, and the task's agree() found them equal, so the student's turn 2 ended by agreement.
    record = build(
        {"belief": "in kitchen", "correct": False},
        {"belief": "kitchen", "correct": True, "agreement": True},
        gold="kitchen",
    )
    # compat: agreement (1) AND the last turn is correct (1) -> 1.0
    assert conversation_metrics(record, compat=True)["agreement_correctness"] == 1.0
    # corrected: the last turn is correct but the other speaker's latest turn (turn 1) is not -> 0.0
    corrected = conversation_metrics(record)
    assert corrected["agreement_correctness"] == 0.0
    assert corrected["agreement"] == 1.0


def test_agreement_correctness_last_turn_wrong_is_zero_in_both_modes(build):
    # turn 1 correct, turn 2 agrees but was graded wrong: compat looks only at turn 2 -> 0; corrected -> 0.
    record = build({"belief": "A"}, {"belief": "a", "correct": False, "agreement": True})
    for compat in (True, False):
        metrics = conversation_metrics(record, compat=compat)
        assert (metrics["agreement"], metrics["agreement_correctness"]) == (1.0, 0.0)


def test_agreement_correctness_both_correct_and_no_agreement(build):
    agreed = build("B", "A", {"belief": "A", "agreement": True})  # turns 2 and 3 both correct
    never = build("A", "A", max_turns=2)  # both correct but nobody flagged agreement (stopped at max_turns)
    for compat in (True, False):
        assert conversation_metrics(agreed, compat=compat)["agreement_correctness"] == 1.0
        metrics = conversation_metrics(never, compat=compat)
        assert (metrics["agreement"], metrics["agreement_correctness"]) == (0.0, 0.0)


def test_final_success_rate_compat_means_ever_correct(build):
    # gold A: turn 1 "A" correct, then both agents drift to "B"; stopped at max_turns 3.
    record = build("A", "B", "B", max_turns=3)
    compat = conversation_metrics(record, compat=True)
    corrected = conversation_metrics(record)
    assert compat["ever_correct"] == corrected["ever_correct"] == 1.0  # turn 1 was correct
    assert compat["final_success_rate"] == 1.0  # reference: "ever correct"
    assert corrected["final_success_rate"] == 0.0  # last non-errored turn (3, "B") is wrong
    assert corrected["final_answer_accuracy"] == compat["final_answer_accuracy"] == 0.0  # last valid: "B"


def test_final_success_rate_vs_final_answer_accuracy_with_unsure_and_error(build):
    # turn 1 "A" correct, turn 2 "not sure yet", turn 3 failed to generate.
    record = build("A", None, {"error": "timeout"})
    corrected = conversation_metrics(record)
    # last non-errored generated turn is turn 2, which has no belief -> 0.0
    assert corrected["final_success_rate"] == 0.0
    # last valid belief is turn 1's "A" -> 1.0
    assert corrected["final_answer_accuracy"] == 1.0
    assert corrected["ever_correct"] == 1.0
    assert conversation_metrics(record, compat=True)["final_success_rate"] == 1.0  # ever correct


def test_n_turns_to_success(build):
    # first correct belief at turn 3 (turn 0 is the opening) -> 3.0 in both modes
    late = build("B", None, "A", "A", max_turns=4)
    assert conversation_metrics(late)["n_turns_to_success"] == 3.0
    assert conversation_metrics(late, compat=True)["n_turns_to_success"] == 3.0
    # never correct: compat counts max_turns (4), corrected excludes the conversation (None)
    never = build("B", "C", "B", "C", max_turns=4)
    assert conversation_metrics(never, compat=True)["n_turns_to_success"] == 4.0
    assert conversation_metrics(never)["n_turns_to_success"] is None


def test_lengths_turn_counts_and_conv_err(build):
    # teacher turns 1 and 3: 100 and 60 tokens; student turn 2: 40 tokens; student turn 4 errored (7 tokens,
    # which no length counts because the turn failed).
    record = build(
        {"belief": "B", "tokens": 100},
        {"belief": "B", "tokens": 40},
        {"belief": "A", "tokens": 60},
        {"error": "server died", "tokens": 7},
    )
    corrected = conversation_metrics(record)
    assert corrected["len_teacher"] == 80.0  # (100 + 60) / 2
    assert corrected["len_student"] == 40.0  # 40 / 1 (the errored turn is excluded)
    assert corrected["conv_len"] == 200.0  # 100 + 40 + 60
    assert corrected["conv_err"] == 1.0  # the last turn has an error
    assert corrected["total_turns"] == 4.0  # generated turns 1..4
    compat = conversation_metrics(record, compat=True)
    assert compat["total_turns"] == 5.0  # len(turns) including turn 0
    assert (compat["t_len"], compat["s_len"]) == (80.0, 40.0)
    assert conversation_metrics(build("A", "A", max_turns=2))["conv_err"] == 0.0


def test_lengths_of_a_speaker_who_never_spoke(build):
    # one-turn CoT run: only the teacher answers (50 tokens); the student's mean is 0.0 as in the reference
    record = build({"belief": "A", "tokens": 50}, max_turns=1)
    metrics = conversation_metrics(record)
    assert (metrics["len_teacher"], metrics["len_student"], metrics["conv_len"]) == (50.0, 0.0, 50.0)
    assert metrics["total_turns"] == 1.0
    assert conversation_metrics(record, compat=True)["total_turns"] == 2.0


def test_lengths_use_speaker_names_generically(build):
    record = build({"belief": "A", "tokens": 30}, {"belief": "A", "tokens": 12}, speakers=("bob", "alice"))
    metrics = conversation_metrics(record, compat=True)
    assert (metrics["len_alice"], metrics["len_bob"]) == (30.0, 12.0)
    assert (metrics["t_len"], metrics["s_len"]) == (0.0, 0.0)  # no teacher/student in this record


def test_extraction_rates_over_rated_turns(build):
    # rated turns = generated turns whose generation succeeded: turns 1-3 (turn 4 errored) -> 3
    record = build(
        {"belief": "A", "method": "rule"},
        {"belief": "B", "method": "judge"},
        {"belief": None, "method": "none", "extraction_error": "judge timed out"},
        {"error": "boom"},
    )
    metrics = conversation_metrics(record)
    assert metrics["rated_turns"] == 3.0
    assert metrics["extractor_err_rate"] == pytest.approx(1 / 3)  # turn 3
    assert metrics["valid_answer_rate"] == pytest.approx(2 / 3)  # turns 1 and 2 have a belief
    assert metrics["judge_rate"] == pytest.approx(1 / 3)  # turn 2


def test_a_conversation_that_failed_at_turn_one(build):
    record = build({"error": "connection refused"})
    corrected = conversation_metrics(record)
    # nothing was rated, so every rate is undefined (None: left out of the run's mean)
    assert corrected["rated_turns"] == 0.0
    for name in ("extractor_err_rate", "valid_answer_rate", "judge_rate", "n_turns_to_success"):
        assert corrected[name] is None
    assert all(corrected[name] is None for name in SOCIAL_KEYS)  # no non-errored generated turn
    assert (corrected["conv_err"], corrected["total_turns"], corrected["final_success_rate"]) == (1.0, 1.0, 0.0)
    compat = conversation_metrics(record, compat=True)
    # compat: rates over nothing are 0.0; the errored turn stays in the social sequence as "not sure yet":
    # tokens [nsy, nsy]; i=1 is never assertive (self_prev = 0.5) nor persuasive (last turn) -> 0 / 1 = 0.0
    assert compat["valid_answer_rate"] == 0.0
    assert compat["n_turns_to_success"] == 20.0  # max_turns
    assert compat["persuade_rate"] == compat["assert_rate"] == 0.0
