"""Compat metrics against the reference's own definitions, on hand-built conversations.

Each conversation is written twice: as the reference recorded it (turn dicts with ``extracted_answer``, the
extractor's validity and status, the matcher's score; reference sections 1.2 and 3.3) and as coral records it.
``reference_metrics`` transcribes the reference's formulas (section 3.6) for those turn dicts, independently of
coral's code, and compat must give the same numbers.
"""

from __future__ import annotations

import pytest

from coral.metrics.conversation import conversation_metrics
from coral.records import ConversationRecord, Turn

NSY = "not sure yet"


def ref_turn(role, answer, em=0.0, generated_ok=True, judge_ok=True):
    """A generated turn as the reference recorded it (turn 0 is added by ``reference_metrics``)."""
    valid = answer is not None and not answer.startswith("Error") and answer != NSY
    return {"role": role, "status_ok": generated_ok, "extracted_answer": answer, "valid": valid,
            "judge_ok": judge_ok, "em": em}


def reference_metrics(turns):
    """The reference's extractor and social metrics of a conversation (turn 0 not included in ``turns``)."""
    rated = turns  # every generated turn carries an extractor annotation, an errored one included
    answers = [NSY] + [t["extracted_answer"] for t in turns]
    scores = [0.5] + [0.5 if t["extracted_answer"] == NSY else t["em"] for t in turns]
    assertive, persuasive, quality = [], [], []
    for i in range(1, len(answers)):
        self_prev = answers[i - 2] if i > 1 else 0.5
        partner_prev = answers[i - 1]
        partner_next = answers[i + 1] if i + 1 < len(answers) else answers[i - 1]
        if partner_prev != self_prev and answers[i] == self_prev:
            assertive.append(scores[i])
        if partner_prev != partner_next and answers[i] == partner_next:
            persuasive.append(scores[i])
            quality.append(scores[i + 1] - scores[i - 1])
    n = len(answers) - 1
    metrics = {
        "rated_turns": float(len(rated)),
        "extractor_err_rate": sum(not t["judge_ok"] for t in rated) / len(rated),
        "valid_answer_rate": sum(t["valid"] for t in rated) / len(rated),
        "persuade_rate": len(persuasive) / n,
        "assert_rate": len(assertive) / n,
        "persuasion_quality": sum(quality) / len(quality) if quality else 0.0,
    }
    for kind, own in (("persuade", persuasive), ("assert", assertive)):
        for label, value in (("correct", 1.0), ("incorrect", 0.0), ("unsure", 0.5)):
            metrics[f"{label}_{kind}_rate"] = own.count(value) / len(own) if own else 0.0
    return metrics


def coral_record(*turns: Turn) -> ConversationRecord:
    opening = Turn(index=0, speaker="student", text="I'm trying to solve this problem: ...", generated=False)
    return ConversationRecord(
        example_id="ex", sample_index=0, task="mmlu_pro", run_seed=0, config_hash="test", protocol="coral",
        agents={"student": "m", "teacher": "m"}, turns=[opening, *turns],
        stop_reason="error" if turns[-1].error else "max_turns", max_turns=20, gold="A",
    )


def rule(index, speaker, belief, cls):
    return Turn(index=index, speaker=speaker, text=f"The correct answer is ({belief})", belief=belief,
                belief_method="rule", belief_class=cls, correct=belief == "A")


def judged(index, speaker, reply):
    """A turn the rules could not read and whose judge reply the task could not read either."""
    return Turn(index=index, speaker=speaker, text="hmm", belief_method="judge", judge_reply=reply, correct=False)


def errored(index, speaker):
    return Turn(index=index, speaker=speaker, text="", error="BackendError: HTTP 503")


def compat_subset(record):
    metrics = conversation_metrics(record, compat=True)
    return {name: metrics[name] for name in REFERENCE_NAMES}


REFERENCE_NAMES = list(reference_metrics([ref_turn("teacher", NSY)]))


def test_compat_rates_an_errored_turn_as_the_reference_did():
    # Item 16. gold A: teacher B (valid), student A (valid, correct), teacher's generation fails. The reference
    # appends the failed turn and runs its judge on the error text, which names no answer: "not sure yet". So
    # it rates 3 turns, 2 of them valid (2/3); coral's default rates only the 2 generated ones (2/2).
    reference = [ref_turn("teacher", "B"), ref_turn("student", "A", em=1.0),
                 ref_turn("teacher", NSY, generated_ok=False)]
    record = coral_record(rule(1, "teacher", "B", 0), rule(2, "student", "A", 1), errored(3, "teacher"))
    assert compat_subset(record) == pytest.approx(reference_metrics(reference))
    compat = conversation_metrics(record, compat=True)
    assert (compat["rated_turns"], compat["valid_answer_rate"]) == (3.0, pytest.approx(2 / 3))
    default = conversation_metrics(record)
    assert (default["rated_turns"], default["valid_answer_rate"]) == (2.0, 1.0)


def test_compat_keeps_an_unreadable_judge_reply_as_the_belief_error_reply():
    # Item 17. gold A: teacher B; student's judge replies "I think it is option one" (no "(X)"), the reference's
    # belief "Error: I think it is option one"; teacher B again; student's judge says "Not sure yet."
    # tok [U, B, E, B, U]  sc [.5, 0, 0, 0, .5]
    #   i=2: sp=U pp=B: tok=E != U -> not assertive (were it U, as coral used to read it: assertive, own .5)
    #   i=3: sp=B pp=E: E != B and tok=B == B -> ASSERTIVE (own 0)
    #   i=4: sp=E pp=B: tok=U != E -> not assertive (were E read as U: assertive); pp=B pn=B (last) -> no
    #   assert 1/4, split (0, 1, 0); no persuasion (i=1: pp=U pn=E, tok=B)
    reference = [ref_turn("teacher", "B"), ref_turn("student", "Error: I think it is option one"),
                 ref_turn("teacher", "B"), ref_turn("student", NSY)]
    record = coral_record(
        rule(1, "teacher", "B", 0), judged(2, "student", "I think it is option one"),
        rule(3, "teacher", "B", 0), judged(4, "student", "Not sure yet."),
    )
    want = reference_metrics(reference)
    assert (want["assert_rate"], want["incorrect_assert_rate"], want["valid_answer_rate"]) == (0.25, 1.0, 0.5)
    assert compat_subset(record) == pytest.approx(want)


def test_compat_reproduces_the_reference_on_a_conversation_with_every_kind_of_turn():
    # gold A: rule beliefs, an unreadable judge reply, "not sure yet", a failed judge call (the reference's
    # "Error: extraction network error"), a correct answer the partner is persuaded to, and a failed generation.
    # tok [U, B, E1, B, U, N, A, A, U]  sc [.5, 0, 0, 0, .5, 0, 1, 1, .5]
    #   i=3 assertive (sp=B, pp=E1); i=6: pp=N != pn=A and tok=A == A -> PERSUASIVE (own 1), quality
    #   sc[7] - sc[5] = 1 - 0 = 1; i=7: sp=N pp=A, tok=A != N; i=8: sp=A pp=A equal -> nothing else
    reference = [
        ref_turn("teacher", "B"), ref_turn("student", "Error: option one"), ref_turn("teacher", "B"),
        ref_turn("student", NSY), ref_turn("teacher", "Error: extraction network error", judge_ok=False),
        ref_turn("student", "A", em=1.0), ref_turn("teacher", "A", em=1.0),
        ref_turn("student", NSY, generated_ok=False),
    ]
    failed_judge = Turn(index=5, speaker="teacher", text="hmm", belief_method="judge", correct=False,
                        extraction_error="judge failed after 3 attempt(s): BackendError: HTTP 503")
    record = coral_record(
        rule(1, "teacher", "B", 0), judged(2, "student", "option one"), rule(3, "teacher", "B", 0),
        judged(4, "student", "I am not sure yet"), failed_judge, rule(6, "student", "A", 1),
        rule(7, "teacher", "A", 1), errored(8, "student"),
    )
    want = reference_metrics(reference)
    assert (want["persuade_rate"], want["assert_rate"], want["rated_turns"]) == (1 / 8, 1 / 8, 8.0)
    assert compat_subset(record) == pytest.approx(want)


def test_records_without_judge_replies_read_unreadable_replies_as_not_sure_yet():
    # a v1 record kept no reply: compat cannot tell "Error: ..." from "not sure yet" and reads "not sure yet"
    record = coral_record(rule(1, "teacher", "B", 0), judged(2, "student", None), rule(3, "teacher", "B", 0))
    # tok [U, B, U, B]: i=2 sp=U pp=B tok=U -> assertive (own .5); i=3 sp=B pp=U tok=B -> assertive (own 0)
    assert conversation_metrics(record, compat=True)["assert_rate"] == pytest.approx(2 / 3)


def test_version_1_and_2_records_still_load_with_the_coral_defaults_of_newer_fields():
    record = coral_record(judged(1, "teacher", "option one"))
    data = record.to_dict()
    assert data["schema_version"] == 3 and data["turns"][1]["judge_reply"] == "option one"
    for new in ("outcome", "protocol_args"):
        del data[new]
    for turn in data["turns"]:
        for new in ("role", "round", "parent", "carries_answer"):
            del turn[new]
    version_2 = ConversationRecord.from_dict({**data, "schema_version": 2})
    assert (version_2.outcome, version_2.protocol_args, version_2.turns[1].role) == (None, {}, None)
    assert version_2.turns[1].carries_answer is True
    del data["turns"][1]["judge_reply"]
    data["schema_version"] = 1
    loaded = ConversationRecord.from_dict(data)
    assert loaded.turns[1].judge_reply is None and loaded.schema_version == 1
    assert conversation_metrics(loaded) == conversation_metrics(version_2)
    with pytest.raises(ValueError, match="schema_version 4"):
        ConversationRecord.from_dict({**data, "schema_version": 4})
