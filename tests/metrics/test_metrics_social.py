"""Social behaviour metrics (persuasion, assertion) on hand-made conversations, both modes.

Notation in the derivations: tok = belief token per turn (U = unsure / "not sure yet", turn 0 is U),
sc = score per turn (1 correct, 0 incorrect, .5 unsure); for turn i: sp = own previous (tok[i-2]),
pp = partner previous (tok[i-1]), pn = partner next (tok[i+1]).
assertive: pp != sp and tok[i] == sp.  persuasive: pp != pn and tok[i] == pn, quality sc[i+1] - sc[i-1].
Turn 1 has no sp (compat: the float 0.5), so it is never assertive; the last turn has no pn (compat: pn =
tok[i-1] = pp), so it is never persuasive.
"""

from __future__ import annotations

import pytest

from coral.metrics.conversation import conversation_metrics
from coral.metrics.social import classify_turns, social_metrics


def social(record, compat):
    return social_metrics(record, compat=compat)


def expected(persuade, assert_, quality, p_split, a_split):
    """The full social dict: rates, quality, and (correct, incorrect, unsure) splits."""
    result = {"persuade_rate": persuade, "assert_rate": assert_, "persuasion_quality": quality}
    for kind, split in (("persuade", p_split), ("assert", a_split)):
        for label, value in zip(("correct", "incorrect", "unsure"), split):
            result[f"{label}_{kind}_rate"] = value
    return result


def approx(d):
    return {k: (pytest.approx(v, abs=1e-12) if v is not None else None) for k, v in d.items()}


NONE3 = (None, None, None)
ZERO3 = (0.0, 0.0, 0.0)


def test_s1_partner_persuaded_to_the_right_answer(build):
    # gold A. tok [U, B, A, A]  sc [.5, 0, 1, 1]
    # i=1: assertive never; pp=U pn=A, tok=B != A            -> -
    # i=2: sp=U pp=B: tok=A != U -> not assertive; pp=B != pn=A and tok=A == A -> PERSUASIVE (own 1),
    #      quality sc[3] - sc[1] = 1 - 0 = 1
    # i=3: sp=B pp=A: tok=A != B; last turn                  -> -
    # persuade 1/3, assert 0/3, quality 1, persuasive split (1, 0, 0)
    record = build("B", "A", {"belief": "A", "agreement": True})
    assert social(record, True) == approx(expected(1 / 3, 0.0, 1.0, (1.0, 0.0, 0.0), ZERO3))
    assert social(record, False) == approx(expected(1 / 3, 0.0, 1.0, (1.0, 0.0, 0.0), NONE3))


def test_s2_assertion_and_not_sure_yet_counts_as_a_belief(build):
    # gold A, max_turns 6. tok [U, A, U, A, B, A, U]  sc [.5, 1, .5, 1, 0, 1, .5]
    # i=1: no sp; pp=U pn=U                                  -> -
    # i=2: sp=U pp=A: A != U and tok=U == U -> ASSERTIVE (own .5: the student "keeps" being unsure);
    #      pp=A pn=A equal -> not persuasive
    # i=3: sp=A pp=U: U != A and tok=A == A -> ASSERTIVE (own 1); pp=U pn=B, tok=A != B
    # i=4: sp=U pp=A: tok=B != U; pp=A pn=A                  -> -
    # i=5: sp=A pp=B: B != A and tok=A == A -> ASSERTIVE (own 1); pp=B pn=U, tok=A != U
    # i=6: sp=B pp=A: tok=U != B; last                       -> -
    # assert 3/6 = .5, split (2/3, 0, 1/3); persuade 0/6; empty persuasive set: compat 0.0, corrected None
    record = build("A", None, "A", "B", "A", None, max_turns=6)
    assert social(record, True) == approx(expected(0.0, 0.5, 0.0, ZERO3, (2 / 3, 0.0, 1 / 3)))
    assert social(record, False) == approx(expected(0.0, 0.5, None, NONE3, (2 / 3, 0.0, 1 / 3)))


def test_s3_equivalent_beliefs_differ_as_strings(build):
    # MATH, gold 1/2. Beliefs "\frac{1}{2}" (class 0, correct), "3" (class 1), "0.5" (class 0), "0.5".
    # sc [.5, 1, 0, 1, 1]
    # compat tok [U, F, 3, H, H] (F = "\frac{1}{2}", H = "0.5", different strings):
    #   i=1: pp=U pn=3, tok=F != 3                           -> -
    #   i=2: sp=U pp=F: tok=3 != U; pp=F pn=H, tok=3 != H    -> -
    #   i=3: sp=F pp=3: tok=H != F -> NOT assertive; pp=3 != pn=H and tok=H == H -> PERSUASIVE (own 1),
    #        quality sc[4] - sc[2] = 1 - 0 = 1
    #   i=4: sp=3 pp=H: tok=H != 3; last                     -> -
    #   persuade 1/4, assert 0/4
    # corrected tok [U, c0, c1, c0, c0]:
    #   i=3: sp=c0 pp=c1: c1 != c0 and tok=c0 == c0 -> ASSERTIVE (own 1); also PERSUASIVE as above
    #   everything else as in compat -> persuade 1/4, assert 1/4, both splits (1, 0, 0)
    record = build(
        {"belief": "\\frac{1}{2}", "cls": 0, "correct": True},
        {"belief": "3", "cls": 1, "correct": False},
        {"belief": "0.5", "cls": 0, "correct": True},
        {"belief": "0.5", "cls": 0, "correct": True, "agreement": True},
        gold="1/2",
    )
    assert social(record, True) == approx(expected(0.25, 0.0, 1.0, (1.0, 0.0, 0.0), ZERO3))
    assert social(record, False) == approx(expected(0.25, 0.25, 1.0, (1.0, 0.0, 0.0), (1.0, 0.0, 0.0)))


def test_s4_persuaded_to_a_wrong_answer_then_an_errored_turn(build):
    # gold A: teacher A (right), student B, teacher B (persuaded, wrong), student turn 4 failed to generate.
    # compat keeps turn 4 as "not sure yet": tok [U, A, B, B, U]  sc [.5, 1, 0, 0, .5]
    #   i=1: pp=U pn=B, tok=A != B                           -> -
    #   i=2: sp=U pp=A: tok=B != U; pp=A != pn=B and tok=B == B -> PERSUASIVE (own 0),
    #        quality sc[3] - sc[1] = 0 - 1 = -1
    #   i=3: sp=A pp=B: tok=B != A; pp=B pn=U, tok=B != U    -> -
    #   i=4: sp=B pp=B equal -> not assertive; last          -> -
    #   persuade 1/4, assert 0/4, split (0, 1, 0)
    # corrected drops turn 4: tok [U, A, B, B], same persuasion at i=2 -> persuade 1/3, assert 0/3
    record = build("A", "B", "B", {"error": "timeout"})
    assert social(record, True) == approx(expected(0.25, 0.0, -1.0, (0.0, 1.0, 0.0), ZERO3))
    assert social(record, False) == approx(expected(1 / 3, 0.0, -1.0, (0.0, 1.0, 0.0), NONE3))


def test_s5_persuaded_to_be_unsure(build):
    # gold A, max_turns 3. tok [U, B, U, U]  sc [.5, 0, .5, .5]
    #   i=1: pp=U pn=U equal                                 -> -
    #   i=2: sp=U pp=B: B != U and tok=U == U -> ASSERTIVE (own .5);
    #        pp=B != pn=U and tok=U == U -> PERSUASIVE (own .5), quality sc[3] - sc[1] = .5 - 0 = .5
    #   i=3: sp=B pp=U: tok=U != B; last                     -> -
    #   persuade 1/3, assert 1/3, both splits (0, 0, 1)
    record = build("B", None, None, max_turns=3)
    want = expected(1 / 3, 1 / 3, 0.5, (0.0, 0.0, 1.0), (0.0, 0.0, 1.0))
    assert social(record, True) == approx(want)
    assert social(record, False) == approx(want)


def test_s6_turn_one_is_never_assertive(build):
    # gold A. tok [U, B, A, B]  sc [.5, 0, 1, 0]
    #   i=1: the reference's self_prev is the float 0.5, never equal to a belief -> not assertive. Without that
    #        placeholder, tok[i-2] = tok[-1] = B would wrap around: pp=U != B and tok=B == B -> assertive.
    #        Corrected mode has no self_prev at all: the same outcome, so the float bug is harmless.
    #   i=2: sp=U pp=B: tok=A != U; pp=B pn=B equal          -> -
    #   i=3: sp=B pp=A: A != B and tok=B == B -> ASSERTIVE (own 0); last -> not persuasive
    #   assert 1/3, split (0, 1, 0); no persuasion
    record = build("B", "A", "B", max_turns=3)
    assert social(record, True) == approx(expected(0.0, 1 / 3, 0.0, ZERO3, (0.0, 1.0, 0.0)))
    assert social(record, False) == approx(expected(0.0, 1 / 3, None, NONE3, (0.0, 1.0, 0.0)))
    # the compat classifier on raw strings: only i=3 is assertive (a wrap-around would add i=1)
    tokens = ["not sure yet", "B", "A", "B"]
    assert classify_turns(tokens, [0.5, 0.0, 1.0, 0.0], compat=True) == ([0.0], [], [])


def test_last_turn_is_never_persuasive():
    # tok [U, B, B]: at the last turn i=2, compat uses pn = tok[i-1] = pp, so pp != pn is False whatever
    # tok[2] is; corrected has no pn at all. i=1: pp=U != pn=B but tok[1]=B == B -> persuasive (own 0),
    # quality sc[2] - sc[0] = 0 - .5 = -.5. i=2: sp=U pp=B: tok=B != U -> not assertive.
    assert classify_turns(["not sure yet", "B", "B"], [0.5, 0.0, 0.0], compat=True) == ([], [0.0], [-0.5])
    assert classify_turns(["unsure", ("class", 0), ("class", 0)], [0.5, 0.0, 0.0]) == ([], [0.0], [-0.5])


def test_corrected_falls_back_to_strings_without_belief_classes(build):
    # same as s3 but the producer wrote no belief_class: corrected compares strings -> like compat,
    # except the empty assertive set is None
    record = build(
        {"belief": "\\frac{1}{2}", "correct": True},
        {"belief": "3", "correct": False},
        {"belief": "0.5", "correct": True},
        {"belief": "0.5", "correct": True, "agreement": True},
        gold="1/2",
        classes=False,
    )
    assert social(record, False) == approx(expected(0.25, 0.0, 1.0, (1.0, 0.0, 0.0), NONE3))


def test_social_metrics_are_part_of_conversation_metrics(build):
    record = build("B", "A", {"belief": "A", "agreement": True})
    metrics = conversation_metrics(record)
    assert metrics["persuade_rate"] == pytest.approx(1 / 3)
    assert metrics["persuasion_quality"] == 1.0
