"""Metrics of one debate record (``coral.conversation.protocols.debate``), from its turns and outcome alone.

Every configured round gets its keys, so every record of a run has the same metric names: a round the debate
never played (it stopped on a failed turn) is None, which the run's mean leaves out. An answer with no valid
belief (unparseable, "not sure yet", a failed request) counts as wrong everywhere; it never counts as correct.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from coral.records import ConversationRecord, Turn

T = TypeVar("T")
Metrics = dict[str, float | None]


def debate_metrics(record: ConversationRecord) -> Metrics:
    """Majority-vote and per-agent accuracy per round, consensus, and answer changes between rounds.

    - ``mv_accuracy``: the final vote's score (a tie under the ``expected`` rule scores 1/|tied|).
    - ``mv_accuracy_round_<r>``: the vote's score after round r.
    - ``agent_accuracy_round_<r>``: the share of agents whose round-r answer is correct.
    - ``consensus``: 1.0 when every agent's final answer is valid and all are one answer under the task's
      equivalence (one belief class).
    - ``w_to_r_round_<r>`` / ``r_to_w_round_<r>`` (r >= 1): the share of agents whose answer went from wrong to
      right / right to wrong between rounds r-1 and r (MAPoRL's self-correction and its opposite).
    """
    rounds = int(record.protocol_args.get("rounds", 0))
    votes = record.outcome.rounds if record.outcome is not None else []
    played = [_answers(record, r) for r in range(len(votes))]
    metrics: Metrics = {
        "mv_accuracy": record.outcome.correct if record.outcome is not None else None,
        "consensus": _consensus(played[-1]) if played else None,
    }
    for r in range(rounds):
        metrics[f"mv_accuracy_round_{r}"] = votes[r].correct if r < len(votes) else None
        metrics[f"agent_accuracy_round_{r}"] = _share(played[r], _right) if r < len(played) else None
    for r in range(1, rounds):
        changes = _changes(played[r - 1], played[r]) if r < len(played) else []
        metrics[f"w_to_r_round_{r}"] = _share(changes, lambda c: c == (False, True))
        metrics[f"r_to_w_round_{r}"] = _share(changes, lambda c: c == (True, False))
    return metrics


def _answers(record: ConversationRecord, round_: int) -> list[Turn]:
    """The agents' answers of ``round_``, in agent order."""
    return [turn for turn in record.turns if turn.role == "debater" and turn.round == round_]


def _right(turn: Turn) -> bool:
    return turn.correct is True


def _changes(before: list[Turn], after: list[Turn]) -> list[tuple[bool, bool]]:
    """Each agent's (right before, right after), matched by speaker."""
    earlier = {turn.speaker: _right(turn) for turn in before}
    return [(earlier[turn.speaker], _right(turn)) for turn in after if turn.speaker in earlier]


def _consensus(answers: list[Turn]) -> float:
    one_answer = len({turn.belief_class for turn in answers}) == 1
    return 1.0 if one_answer and all(turn.valid for turn in answers) else 0.0


def _share(items: Sequence[T], test: Callable[[T], bool]) -> float | None:
    """The fraction of ``items`` that pass ``test``; None for no items."""
    return sum(1 for item in items if test(item)) / len(items) if items else None
