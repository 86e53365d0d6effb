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
            groups.setdefault(turn.belief if turn.belief_class is None else turn.belief_class, []).append(turn)
    outcome = Outcome(
        answer=None, correct=0.0, decided_by="no_valid_answer",
        votes={group[0].belief or "": len(group) for group in groups.values()},
        invalid=sum(turn.belief is None for turn in turns), tie_rule=tie_rule, voters=[turn.index for turn in turns],
    )
    if groups:
        most = max(len(group) for group in groups.values())
        top = [group for group in groups.values() if len(group) == most]
        chosen, outcome.correct = _decide(top, tie_rule, rng)
        outcome.answer = chosen[0].belief
        outcome.decided_by = "majority" if len(top) == 1 else "tie"
        outcome.tied = [group[0].belief or "" for group in top] if len(top) > 1 else []
    return outcome


def _decide(top: list[list[Turn]], tie_rule: TieRule, rng: random.Random | None) -> tuple[list[Turn], float]:
    """The winning answer's turns among those with the most votes (groups in first-voter order), and its score."""
    if len(top) == 1 or tie_rule == "first_agent":
        return top[0], _score(top[0])
    if tie_rule == "expected":
        return top[0], sum(map(_score, top)) / len(top)
    if rng is None:
        raise ValueError("the random tie rule needs a seeded generator")
    chosen = rng.choice(top)
    return chosen, _score(chosen)


def _score(group: list[Turn]) -> float:
    """1.0 when the answer is correct (every turn of a class shares its grade; any one suffices)."""
    return 1.0 if any(turn.correct for turn in group) else 0.0
