"""MAPoRL's rewards for debate records: influence-aware verification reward, reward shaping, malformed penalty.

Pure functions of a record (and, with a learned verifier, of its scores): no model is called, so a data builder,
a metric or a test computes the same rewards from the stored JSON lines. Sources: the MAPoRL paper (Definition 1,
Tables 1 and 2) and its official code, as summarised in training.md §1.2 and §1.4.

A debate record holds the question (turn 0), then one ``debater`` turn per agent per round, in agent order. Rounds
are numbered from 0 here, so the paper's turn t is round t - 1; x is the last round actually played (a debate may
end early). Rewards are keyed by turn index, the key every other stage uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from coral.records import ConversationRecord, Turn

Share = Literal["all", "individual"]
"""Whose future answers count in a turn's reward: every agent's, averaged (Definition 1, the code's
``discounted_sum``/``all``), or only the agent's own (the code's ``discounted_sum``/``individual``)."""

Convention = Literal["paper", "official_code"]
"""Which reward-shaping tables apply: the paper's Tables 1 and 2, or what the official ``bonus_rule`` does
(training.md §1.4: it swaps α0/α1 for W→R revisions and flips the influence table's signs)."""

DebateGrid = list[list[Turn]]
"""A debate's answers as rounds × agents: ``grid[r][a]`` is agent ``a``'s answer in round ``r``."""

SHARES: tuple[Share, ...] = ("all", "individual")
CONVENTIONS: tuple[Convention, ...] = ("paper", "official_code")

ShapingKey = tuple[bool | None, bool | None, bool | None]
"""A shaping table's key: two correctness states and a majority; None (no majority) matches no row."""
ShapingTable = dict[ShapingKey, tuple[str, int]]
"""Key -> (the constant's name, its sign)."""

# Shaping tables, one row per line of the paper's tables: key -> (constant, sign). True is R (correct), False is W.
# "Majority" is the other agents' mean correctness against the threshold (see ``others_majority``).
#
# Own revision, key (own at t, own at t+1, others' majority at t); the bonus goes on the agent's t+1 answer.
REVISION_TABLES: dict[Convention, ShapingTable] = {
    "paper": {  # Table 1
        (True, False, True): ("alpha1", -1),
        (True, False, False): ("alpha0", -1),
        (False, True, False): ("alpha0", +1),
        (False, True, True): ("alpha1", +1),
    },
    "official_code": {  # R→W as the paper; W→R with α0 and α1 swapped
        (True, False, True): ("alpha1", -1),
        (True, False, False): ("alpha0", -1),
        (False, True, False): ("alpha1", +1),
        (False, True, True): ("alpha0", +1),
    },
}
# Influence, key (others' majority at t, others' majority at t+1, own at t); the bonus goes on the agent's t answer.
INFLUENCE_TABLES: dict[Convention, ShapingTable] = {
    "paper": {  # Table 2
        (True, False, True): ("beta1", -1),
        (True, False, False): ("beta0", -1),
        (False, True, False): ("beta0", +1),
        (False, True, True): ("beta1", +1),
    },
    "official_code": {  # others W→R: the paper's signs flipped; others R→W: flipped and β0/β1 swapped
        (False, True, True): ("beta1", -1),
        (False, True, False): ("beta0", -1),
        (True, False, False): ("beta1", +1),
        (True, False, True): ("beta0", +1),
    },
}

LOOP_NGRAM = 8
"""Words per n-gram of the repetition-loop check."""
LOOP_SCAN_CHARS = 100_000
"""The loop check reads at most this many characters of a turn, so a hostile answer costs bounded time."""


@dataclass(frozen=True)
class RewardSettings:
    """How a debate's per-turn rewards are made; the defaults are the paper's (no shaping, no penalty).

    Args:
        gamma: discount of future rounds in the influence reward (the official code's ``rule_discount`` 0.3).
        share: whose future answers count (``all``: Definition 1; ``individual``: the agent's own only).
        alpha0: shaping, own revision against the others' majority being wrong (critical reasoning).
        alpha1: shaping, own revision against the others' majority being right (being persuaded).
        beta0: shaping, influence of a wrong answer on the others' majority.
        beta1: shaping, influence of a right answer on the others' majority (persuading).
        convention: ``paper`` (Tables 1 and 2) or ``official_code`` (the public code's behaviour).
        threshold: the others' mean correctness above which their majority is right, below which it is wrong;
            exactly at it there is no majority and no bonus.
        penalty: the reward that replaces a malformed answer's (the official code's −10); None: no penalty.
        min_tokens: a completion shorter than this many tokens is malformed (the code's 50; 0: no check).
        loop_repeats: an answer repeating one ``LOOP_NGRAM``-word n-gram this many times is malformed (0: no check).
    """

    gamma: float = 0.3
    share: Share = "all"
    alpha0: float = 0.0
    alpha1: float = 0.0
    beta0: float = 0.0
    beta1: float = 0.0
    convention: Convention = "paper"
    threshold: float = 0.5
    penalty: float | None = None
    min_tokens: int = 0
    loop_repeats: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        if self.share not in SHARES:
            raise ValueError(f"unknown share {self.share!r} (known: {', '.join(SHARES)})")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"unknown convention {self.convention!r} (known: {', '.join(CONVENTIONS)})")


def debate_grid(record: ConversationRecord) -> DebateGrid:
    """The debaters' turns as rounds × agents, so an answer's neighbours are one index away.

    The neighbours are the same agent's next answer and the other agents' answers of this round and the next.
    Agents are ordered as they speak in round 0, and every round must list them in that order. The last round may
    stop short (a failed request ends the debate): it is kept with the answers it has.
    """
    grid: DebateGrid = []
    for turn in record.turns:
        if turn.role != "debater":
            continue
        if turn.round == len(grid):
            grid.append([])
        elif turn.round != len(grid) - 1:
            raise ValueError(f"turn {turn.index}: round {turn.round} follows round {len(grid) - 1}")
        grid[-1].append(turn)
    agents = [turn.speaker for turn in grid[0]] if grid else []
    for number, row in enumerate(grid):
        speakers = [turn.speaker for turn in row]
        cut_short = number == len(grid) - 1 and speakers == agents[: len(speakers)]
        if speakers != agents and not cut_short:
            raise ValueError(f"round {number} has speakers {speakers}, round 0 had {agents}")
    return grid


def gold_scores(record: ConversationRecord) -> dict[int, float]:
    """Verifier scores from the gold label (the code's no-verifier variant): 1.0 for a correct answer, else 0.0.

    An answer with no valid belief, or whose request failed, is not correct and scores 0.0.
    """
    return {turn.index: 1.0 if turn.correct else 0.0 for row in debate_grid(record) for turn in row}


def influence_rewards(
    record: ConversationRecord, scores: Mapping[int, float], gamma: float = 0.3, share: Share = "all"
) -> dict[int, float]:
    """Definition 1's influence-aware verification reward of every debater turn: {turn index: reward}.

    R(s_ta) = [V(s_ta) + Σ_{t'=t+1..x} γ^(t'−t)·F(t')] / Σ_{t'=t..x} γ^(t'−t), where F(t') is the mean score of
    round t' (``share="all"``) or the agent's own score in it (``share="individual"``). An answer is thus credited
    for the answers it helped produce later, and the last round's reward is its own score. ``gamma=0`` gives the
    code's ``current``/``individual`` mode (own score only). A round cut short averages the answers it has.

    Args:
        record: a debate record.
        scores: turn index -> verifier score V (a learned verifier's probability, or ``gold_scores``).
        gamma: discount of later rounds.
        share: whose later answers count.
    """
    if share not in SHARES:
        raise ValueError(f"unknown share {share!r} (known: {', '.join(SHARES)})")
    grid = debate_grid(record)
    missing = [turn.index for row in grid for turn in row if turn.index not in scores]
    if missing:
        raise ValueError(f"no verifier score for turns {missing}")
    values = [[scores[turn.index] for turn in row] for row in grid]
    rewards: dict[int, float] = {}
    for t, row in enumerate(grid):
        for a, turn in enumerate(row):
            later = _later_scores(values[t + 1 :], a, share)
            numerator = values[t][a] + sum(gamma ** (k + 1) * score for k, score in enumerate(later))
            rewards[turn.index] = numerator / sum(gamma**k for k in range(len(later) + 1))
    return rewards


def _later_scores(rows: Sequence[Sequence[float]], agent: int, share: Share) -> list[float]:
    """F(t') for each later round: the round's mean, or the agent's own score while the agent still answered."""
    if share == "all":
        return [sum(row) / len(row) for row in rows]
    return [row[agent] for row in rows if agent < len(row)]


def others_majority(row: Sequence[Turn], agent: int, threshold: float = 0.5) -> bool | None:
    """Whether the other agents' majority in a round is right: their mean correctness against ``threshold``.

    This is the official code's rule, and the one used for the paper's tables too (the paper does not define
    "majority"): above the threshold is R, below is W, exactly at it (or with no other agent) there is none.
    Correctness is binary: an answer that is not graded correct counts as wrong.
    """
    others = [turn for position, turn in enumerate(row) if position != agent]
    if not others:
        return None
    mean = sum(bool(turn.correct) for turn in others) / len(others)
    if mean == threshold:
        return None
    return mean > threshold


def shaping_bonus(
    record: ConversationRecord,
    alpha0: float = 0.0,
    alpha1: float = 0.0,
    beta0: float = 0.0,
    beta1: float = 0.0,
    convention: Convention = "paper",
    threshold: float = 0.5,
) -> dict[int, float]:
    """Reward-shaping bonus of every debater turn, {turn index: bonus}, to steer agents toward collaboration.

    For each pair of consecutive rounds (t, t+1) and each agent: the revision table (paper Table 1) gives a bonus
    on the agent's t+1 answer from how it changed its own answer against the others' majority at t; the
    influence table (paper Table 2) gives a bonus on its t answer from how the others' majority moved from t to
    t+1. Both can land on one turn; they add. With one agent there is no majority and no bonus (the official code
    would still apply α1 to a single agent's revision).

    Args:
        record: a debate record.
        alpha0: own revision when the others' majority is wrong.
        alpha1: own revision when the others' majority is right.
        beta0: influence of a wrong answer.
        beta1: influence of a right answer.
        convention: ``paper`` or ``official_code`` (see ``REVISION_TABLES`` and ``INFLUENCE_TABLES``).
        threshold: see ``others_majority``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r} (known: {', '.join(CONVENTIONS)})")
    constants = {"alpha0": alpha0, "alpha1": alpha1, "beta0": beta0, "beta1": beta1}
    grid = debate_grid(record)
    bonus = {turn.index: 0.0 for row in grid for turn in row}
    for now, after in zip(grid, grid[1:]):
        for agent, turn in enumerate(now[: len(after)]):
            majority_now = others_majority(now, agent, threshold)
            majority_after = others_majority(after, agent, threshold)
            revision = (bool(turn.correct), bool(after[agent].correct), majority_now)
            influence = (majority_now, majority_after, bool(turn.correct))
            bonus[after[agent].index] += _table_bonus(REVISION_TABLES[convention], revision, constants)
            bonus[turn.index] += _table_bonus(INFLUENCE_TABLES[convention], influence, constants)
    return bonus


def _table_bonus(
    table: ShapingTable,
    key: ShapingKey,
    constants: Mapping[str, float],
) -> float:
    """The signed constant of the table's row for ``key``; 0.0 when no row matches (no change, or no majority)."""
    row = table.get(key)
    if row is None:
        return 0.0
    name, sign = row
    return sign * constants[name]


def has_ngram_loop(text: str, repeats: int, ngram: int = LOOP_NGRAM) -> bool:
    """Whether some ``ngram``-word sequence occurs ``repeats`` times: a generation stuck in a loop.

    Linear in the text (each n-gram hashed once) and bounded: only the first ``LOOP_SCAN_CHARS`` are read.
    """
    words = text[:LOOP_SCAN_CHARS].split()
    counts = Counter(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
    return any(count >= repeats for count in counts.values())


def is_malformed(turn: Turn, min_tokens: int = 0, loop_repeats: int = 0) -> bool:
    """Whether an answer is malformed, so its reward can be replaced by the penalty.

    Malformed: its request failed, it holds no valid answer, it is shorter than ``min_tokens`` completion tokens, or
    it loops (``loop_repeats`` > 0). These are the official code's checks, with its "no boxed answer" read as "no
    valid belief", which the task's parser decides.
    """
    if turn.error is not None or turn.belief is None:
        return True
    if turn.usage.completion_tokens < min_tokens:
        return True
    return loop_repeats > 0 and has_ngram_loop(turn.text, loop_repeats)


def malformed_penalty(
    record: ConversationRecord, penalty: float = -10.0, min_tokens: int = 0, loop_repeats: int = 0
) -> dict[int, float]:
    """{turn index: penalty} for each malformed debater answer, so the policy learns to answer in the expected form.

    The penalty is a fixed reward that replaces the answer's own (the official code's −10).

    Args:
        record: a debate record.
        penalty: the replacing reward.
        min_tokens: see ``is_malformed``.
        loop_repeats: see ``is_malformed``.
    """
    return {
        turn.index: penalty
        for row in debate_grid(record)
        for turn in row
        if is_malformed(turn, min_tokens, loop_repeats)
    }


def turn_rewards(
    record: ConversationRecord, settings: RewardSettings, scores: Mapping[int, float] | None = None
) -> dict[int, float]:
    """The final reward of every debater turn, {turn index: reward}: what PPO puts on the answer's last token.

    Influence reward plus shaping bonus; a malformed answer's reward is replaced by the penalty when one is set.

    Args:
        record: a debate record.
        settings: how rewards are made.
        scores: turn index -> verifier score; None scores with the gold labels (``gold_scores``).
    """
    scores = gold_scores(record) if scores is None else scores
    rewards = influence_rewards(record, scores, settings.gamma, settings.share)
    bonus = shaping_bonus(
        record,
        settings.alpha0,
        settings.alpha1,
        settings.beta0,
        settings.beta1,
        settings.convention,
        settings.threshold,
    )
    for index, extra in bonus.items():
        rewards[index] += extra
    if settings.penalty is not None:
        rewards.update(malformed_penalty(record, settings.penalty, settings.min_tokens, settings.loop_repeats))
    return rewards
