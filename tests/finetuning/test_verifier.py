"""The verifier's data: rows from debate records and their per-question balancing."""

from __future__ import annotations

from coral.records import ConversationRecord, Turn
from finetuning.trainers.verifier import VerifierRow, balance_rows, verifier_rows


def rows(question, right, wrong):
    return [VerifierRow(question, f"{question} right {i}", True) for i in range(right)] + [
        VerifierRow(question, f"{question} wrong {i}", False) for i in range(wrong)
    ]


def test_each_question_keeps_as_many_right_as_wrong_answers_and_one_sided_questions_none():
    data = rows("q1", 5, 2) + rows("q2", 1, 3) + rows("q3", 4, 0) + rows("q4", 0, 2)
    balanced = balance_rows(data, seed=0)
    counts = {(r.question, r.correct): 0 for r in balanced}
    for r in balanced:
        counts[(r.question, r.correct)] += 1
    assert counts == {("q1", True): 2, ("q1", False): 2, ("q2", True): 1, ("q2", False): 1}
    assert [r.question for r in balanced] == ["q1"] * 4 + ["q2"] * 2
    assert len(set(balanced)) == 6  # no row twice
    assert {r.answer for r in balanced if r.question == "q1" and not r.correct} == {"q1 wrong 0", "q1 wrong 1"}


def test_balancing_is_seeded():
    data = rows("q1", 10, 3)
    assert balance_rows(data, seed=1) == balance_rows(data, seed=1)
    picks = {tuple(r.answer for r in balance_rows(data, seed=s) if r.correct) for s in range(5)}
    assert len(picks) > 1


def test_rows_come_from_graded_debater_answers_only():
    turns = [
        Turn(index=0, speaker="moderator", text="What is 2+2?", generated=False, role="question"),
        Turn(index=1, speaker="agent_1", text="4", role="debater", round=0, correct=True, belief="4"),
        Turn(index=2, speaker="agent_2", text="5", role="debater", round=0, correct=False, belief="5"),
        Turn(index=3, speaker="agent_1", text="?", role="debater", round=1, correct=None),
    ]
    record = ConversationRecord(example_id="e", sample_index=0, task="gsm8k", run_seed=0, config_hash="h",
                                protocol="debate", agents={}, turns=turns, stop_reason="completed", max_turns=4)
    assert verifier_rows([record]) == [
        VerifierRow("What is 2+2?", "4", True),
        VerifierRow("What is 2+2?", "5", False),
    ]
