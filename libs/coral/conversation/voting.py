"""Majority vote over answering turns, with the tie rules of MAPoRL and Du et al.

Pure: it reads the turns' beliefs, belief classes (the task's equivalence, numbered by the context) and grades,
so a data builder or a metric can recompute a vote without a model or a grader. A turn with no valid answer
(unparseable, "not sure yet", errored) is counted in ``invalid`` and never wins against a valid answer; when no
turn holds one, nothing is decided and the outcome scores 0 (Du et al.'s evaluation counted an unparseable
answer as correct: a bug this avoids).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from coral.records import Outcome, TieRule, Turn

TIE_RULES: tuple[TieRule, ...] = ("expected", "first_agent", "random")


def majority_vote(turns: Sequence[Turn], tie_rule: TieRule = "expected", rng: random.Random | None = None) -> Outcome:
    """The majority answer of ``turns`` (in agent order) and how it was decided.

    Args:
        turns: the voting turns, in the order their agents are listed (``first_agent`` breaks ties by it).
        tie_rule: ``expected`` scores a tie 1/|tied| when the gold is among the tied answers (MAPoRL) and names
            the earliest-given of them; ``first_agent`` takes the tied answer the earliest voter gave (Du et al.);
            ``random`` picks one with ``rng``.
        rng: the seeded generator ``random`` picks with (required for that rule only).
    """
    if tie_rule not in TIE_RULES:
        raise ValueError(f"unknown tie rule {tie_rule!r} (known: {', '.join(TIE_RULES)})")
    groups: dict[object, list[Turn]] = {}  # answer class -> its turns, in order of first appearance
    for turn in turns:
        if turn.belief is not None:
            key = turn.belief_class if turn.belief_class is not None else turn.belief
            groups.setdefault(key, []).append(turn)
    voters = [turn.index for turn in turns]
    invalid = sum(turn.belief is None for turn in turns)
    votes = {group[0].belief or "": len(group) for group in groups.values()}
    base = {"votes": votes, "invalid": invalid, "tie_rule": tie_rule, "voters": voters}
    if not groups:
        return Outcome(answer=None, correct=0.0, decided_by="no_valid_answer", **base)
    most = max(len(group) for group in groups.values())
    top = [group for group in groups.values() if len(group) == most]
    if len(top) == 1:
        return Outcome(answer=top[0][0].belief, correct=_score(top[0]), decided_by="majority", **base)
    tied = [group[0].belief or "" for group in top]
    if tie_rule == "expected":
        chosen, correct = top[0], sum(map(_score, top)) / len(top)
    elif tie_rule == "first_agent":
        chosen = top[0]  # groups keep the order of their first voter
        correct = _score(chosen)
    else:
        if rng is None:
            raise ValueError("the random tie rule needs a seeded generator")
        chosen = rng.choice(top)
        correct = _score(chosen)
    return Outcome(answer=chosen[0].belief, correct=correct, decided_by="tie", tied=tied, **base)


def _score(group: list[Turn]) -> float:
    """1.0 when the answer is correct (every turn of a class shares its grade; any one suffices)."""
    return 1.0 if any(turn.correct for turn in group) else 0.0
