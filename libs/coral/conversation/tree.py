"""Tree sampling: which of a level's candidate turns continues the conversation.

At every level the speaker produces ``beam_size`` candidates from the same prefix; all are annotated, one
continues and the others are kept as its ``siblings`` (coral_reference.md section 5.1: one trunk with a branching
factor of ``beam_size``, siblings are scored leaves). Errored candidates are kept but never continue, a fix of
the reference, which could continue an error text as a turn. Each strategy takes the non-errored candidates and
a seeded generator, so the pick is reproducible whatever order the requests finished in.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from coral.records import Turn

Strategy = Callable[[list[Turn], random.Random], Turn]


def pick_random(candidates: list[Turn], rng: random.Random) -> Turn:
    """Uniformly at random: the paper's strategy."""
    return rng.choice(candidates)


def pick_stratified(candidates: list[Turn], rng: random.Random) -> Turn:
    """A fair coin between correct and incorrect candidates when both exist, then uniformly within the side."""
    correct = [c for c in candidates if c.correct]
    incorrect = [c for c in candidates if not c.correct]
    side = correct if incorrect == [] or (correct and rng.random() < 0.5) else incorrect
    return rng.choice(side)


def pick_diverse(candidates: list[Turn], rng: random.Random) -> Turn:
    """Every distinct belief (no belief counts as one) equally likely, so rare answers get continued too."""
    groups: dict[int | None, list[Turn]] = {}
    for candidate in candidates:
        groups.setdefault(candidate.belief_class, []).append(candidate)
    keys = sorted(groups, key=lambda k: -1 if k is None else k)
    return rng.choice(groups[rng.choice(keys)])


STRATEGIES: dict[str, Strategy] = {"random": pick_random, "stratified": pick_stratified, "diversity": pick_diverse}


def strategy(name: str) -> Strategy:
    """The expansion strategy registered as ``name`` in ``STRATEGIES``."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown expansion strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def continue_with(candidates: list[Turn], pick: Strategy, rng: random.Random) -> Turn:
    """The candidate that continues, carrying the others as siblings; an errored turn only if all errored."""
    usable = [c for c in candidates if c.error is None]
    chosen = pick(usable, rng) if usable else candidates[0]
    chosen.siblings = [c for c in candidates if c is not chosen]
    return chosen
