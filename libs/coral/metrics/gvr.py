"""Metrics of one generate-verify-refine record (``coral.conversation.protocols.generate_verify_refine``).

A pass is a refiner turn with the generator answer it refines (its verifier's parent, or its own parent in the
G+R ablation); a tree with branching n has one pass per refiner. An answer with no valid belief counts as wrong.
"""

from __future__ import annotations

from coral.records import ConversationRecord, Turn

Metrics = dict[str, float | None]


def gvr_metrics(record: ConversationRecord) -> Metrics:
    """Accuracy after each role, the vote, and how often refining fixes or breaks the generator's answer.

    - ``generator_accuracy`` / ``refiner_accuracy``: the share of generator / refiner answers that are correct.
    - ``mv_accuracy``: the vote over the refiners' answers (MV@k; a tie under ``expected`` scores 1/|tied|).
    - ``self_correction_rate``: the share of passes whose generator answer was wrong and refined answer right.
    - ``self_corruption_rate``: the share of passes whose generator answer was right and refined answer wrong.
    """
    generators = [t for t in record.turns if t.role == "generator" and t.error is None]
    refiners = [t for t in record.turns if t.role == "refiner" and t.error is None]
    passes = [(_right(_generator_of(record, r)), _right(r)) for r in refiners]
    return {
        "generator_accuracy": _share([_right(g) for g in generators]),
        "refiner_accuracy": _share([_right(r) for r in refiners]),
        "mv_accuracy": record.outcome.correct if record.outcome is not None else None,
        "self_correction_rate": _share([p == (False, True) for p in passes]),
        "self_corruption_rate": _share([p == (True, False) for p in passes]),
    }


def _generator_of(record: ConversationRecord, refiner: Turn) -> Turn:
    """The generator answer a refiner turn refines: up the parent links to the first generator turn."""
    turn = refiner
    while turn.role != "generator" and turn.parent is not None:
        turn = record.turns[turn.parent]
    return turn


def _right(turn: Turn) -> bool:
    return turn.correct is True


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None
