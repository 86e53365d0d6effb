"""Metrics of one conversation, computed from its record alone.

Names carry no model names (the reference prefixed them with the rater's class and model). ``compat=True``
reproduces the reference's definitions (reference section 3.6) so paper numbers can be compared; the default
fixes what they get wrong: ``final_success_rate`` means the final answer's correctness rather than "ever
correct", ``agreement_correctness`` asks both agreeing beliefs to be correct, ``total_turns`` counts only
generated turns, a conversation that never succeeds is left out of ``n_turns_to_success`` instead of counting
as ``max_turns``, and a rate over no turns is None (left out of the mean) rather than 0.

A value of None always means "not defined for this conversation; exclude it from the mean".
"""

from __future__ import annotations

from collections.abc import Callable

from coral.metrics.debate import debate_metrics
from coral.metrics.gvr import gvr_metrics
from coral.metrics.social import social_metrics
from coral.records import ConversationRecord, Turn

Metrics = dict[str, float | None]


def conversation_metrics(record: ConversationRecord, compat: bool = False) -> Metrics:
    """Every per-conversation metric of ``record`` as one flat dict.

    Args:
        record: one finished conversation (turn 0 is the opening message).
        compat: use the reference's definitions instead of the corrected defaults.
    """
    metrics: Metrics = {}
    for part in (_turn_counts, _lengths, _extraction):
        metrics.update(part(record, compat))
    if record.protocol == "coral":
        for part in (_agreement, _correctness, social_metrics):
            metrics.update(part(record, compat))
    elif record.protocol in PROTOCOL_METRICS:
        metrics.update(PROTOCOL_METRICS[record.protocol](record))
    elif record.outcome is not None:  # a protocol with no metrics of its own: its vote's score
        metrics["mv_accuracy"] = record.outcome.correct
    return metrics


PROTOCOL_METRICS: dict[str, Callable[[ConversationRecord], Metrics]] = {
    "debate": debate_metrics,
    "generate_verify_refine": gvr_metrics,
}
"""A protocol's own metrics, beside the turn counts, lengths and extraction rates every record gets (Coral's
agreement, correctness and social metrics are computed above, with their compat variants)."""


def _generated(record: ConversationRecord) -> list[Turn]:
    return [turn for turn in record.turns if turn.generated]


def _answered(record: ConversationRecord) -> list[Turn]:
    """Generated turns whose generation succeeded (an errored turn has no text, so nothing was extracted)."""
    return [turn for turn in _generated(record) if turn.error is None]


def _rated(record: ConversationRecord, compat: bool) -> list[Turn]:
    """The turns whose answer was extracted: answering turns (never a critique) that did not fail (compat: did)."""
    return [turn for turn in (_generated(record) if compat else _answered(record)) if turn.carries_answer]


def _is_correct(turn: Turn | None) -> bool:
    return turn is not None and turn.correct is True


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


def _turn_counts(record: ConversationRecord, compat: bool) -> Metrics:
    """``conv_err`` and ``total_turns``.

    ``conv_err``: a generation failure ended the conversation, or it raised (stored with no turns at all);
    ``total_turns``: its length.
    """
    errored = not record.turns or record.turns[-1].error is not None
    total = len(record.turns) if compat else len(_generated(record))
    return {"conv_err": _flag(errored), "total_turns": float(total)}


def _lengths(record: ConversationRecord, compat: bool) -> Metrics:
    """Mean completion tokens per speaker (``len_<speaker>``) and the conversation's total (``conv_len``).

    Errored turns are left out of both, as in the reference. Every agent of the record gets a key, 0.0 when it
    never spoke (e.g. the asker in a one-turn CoT run), so keys are the same across a run.
    """
    answered = _answered(record)
    speakers = dict.fromkeys([*record.agents, *(turn.speaker for turn in answered)])
    metrics: Metrics = {}
    for speaker in speakers:
        tokens = [turn.usage.completion_tokens for turn in answered if turn.speaker == speaker]
        metrics[f"len_{speaker}"] = sum(tokens) / len(tokens) if tokens else 0.0
    metrics["conv_len"] = float(sum(turn.usage.completion_tokens for turn in answered))
    if compat:
        metrics["t_len"] = metrics.get("len_teacher", 0.0)
        metrics["s_len"] = metrics.get("len_student", 0.0)
    return metrics


def _extraction(record: ConversationRecord, compat: bool) -> Metrics:
    """How belief extraction went, over the rated turns (generated turns whose generation succeeded).

    Compat rates the errored turn too, as the reference did: its judge read the error text and found no answer
    (a rated turn with no valid answer and no extraction error).
    """
    rated = _rated(record, compat)
    metrics: Metrics = {"rated_turns": float(len(rated))}
    rates = {
        "extractor_err_rate": [turn.extraction_error is not None for turn in rated],
        "valid_answer_rate": [turn.belief is not None for turn in rated],
        "judge_rate": [turn.belief_method == "judge" for turn in rated],
    }
    for name, hits in rates.items():
        metrics[name] = sum(hits) / len(hits) if hits else (0.0 if compat else None)
    return metrics


def _agreement(record: ConversationRecord, compat: bool) -> Metrics:
    """``agreement`` (ended by agreement) and the headline ``agreement_correctness``."""
    agreeing = [i for i, turn in enumerate(record.turns) if turn.agreement]
    if not agreeing:
        return {"agreement": 0.0, "agreement_correctness": 0.0}
    if compat:  # the reference grades only the last turn
        return {"agreement": 1.0, "agreement_correctness": _flag(_is_correct(record.turns[-1]))}
    end = agreeing[-1]
    partner = _latest_of_other_speaker(record.turns, end)
    both = _is_correct(record.turns[end]) and _is_correct(partner)
    return {"agreement": 1.0, "agreement_correctness": _flag(both)}


def _latest_of_other_speaker(turns: list[Turn], end: int) -> Turn | None:
    """The turn before ``end`` by a different speaker: the belief the agreeing turn agreed with."""
    speaker = turns[end].speaker
    return next((turn for turn in reversed(turns[:end]) if turn.speaker != speaker), None)


def _correctness(record: ConversationRecord, compat: bool) -> Metrics:
    """Whether and when the conversation found the gold answer."""
    generated = _generated(record)
    ever = any(_is_correct(turn) for turn in generated)
    answered = _answered(record)
    valid = [turn for turn in generated if turn.belief is not None]
    final = _flag(ever) if compat else _flag(bool(answered) and _is_correct(answered[-1]))
    return {
        "ever_correct": _flag(ever),
        "final_success_rate": final,
        "final_answer_accuracy": _flag(bool(valid) and _is_correct(valid[-1])),
        "n_turns_to_success": _turns_to_success(record, compat),
    }


def _turns_to_success(record: ConversationRecord, compat: bool) -> float | None:
    """Index (turn 0 = opening) of the first correct turn; none: ``max_turns`` (compat) or None (excluded)."""
    for index, turn in enumerate(record.turns):
        if turn.generated and _is_correct(turn):
            return float(index)
    return float(record.max_turns) if compat else None
