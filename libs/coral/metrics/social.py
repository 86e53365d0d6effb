"""Social behaviour metrics: how often a turn persuades its partner or holds on to its own belief.

Definitions follow the Coral paper (App. B). For a generated turn ``u_i`` with belief ``B``:

- persuasive: the partner's next belief equals ``B`` and differs from the partner's previous belief
  (the partner moved to this turn's belief);
- assertive: ``B`` equals this speaker's previous belief and the partner's previous belief differs from it
  (the speaker kept its belief against a partner who disagreed).

Both modes assume two speakers who alternate, so ``i - 1`` and ``i + 1`` are the partner and ``i - 2`` is the
speaker's own previous turn. Turn 0 (the opening message) counts as "unsure" with score 0.5.

Default (corrected) mode compares beliefs by their equivalence class (``Turn.belief_class``), treats a turn
with no belief as the sentinel "unsure", and leaves a generation-errored turn out of the sequence. Turn 1 has
no previous belief of its own, so it is never assertive; the last turn has no partner reply, so it is never
persuasive; a rate over an empty set is None (left out of the mean over conversations).

Compat mode reproduces the reference (``eval_utils.social_behavior_metrics``): beliefs are compared as the
reference's belief strings (``reference_belief``: "not sure yet" and "Error: <judge reply>" are ordinary
beliefs), an errored turn stays in the sequence, turn 1's "own previous belief" is the float 0.5 (never equal
to a string, so turn 1 is never assertive, the same outcome as the corrected rule; without that placeholder
``ans[-1]`` would wrap to the last turn), the last turn's "partner reply" is the partner's previous belief (so
it can never be persuasive), and rates over an empty set are 0.0. The reference rated an errored turn like any
other: its judge read the error text, which names no answer, so the turn's belief was "not sure yet".
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from math import fsum

from coral.records import ConversationRecord, Turn
from coral.tasks.base import NOT_SURE

UNSURE = "unsure"
"""Corrected-mode token of a turn that commits to no answer (beliefs are tuples, so it cannot collide)."""
COMPAT_UNSURE = NOT_SURE
"""The reference's belief string for "no answer"; in compat mode it compares equal like any other belief."""
UNSURE_SCORE = 0.5
"""Score of a turn without a belief (the reference's ``not_sure_score``)."""

COMPAT_JUDGE_FAILED = "Error: extraction network error"
"""The reference's belief string for a turn whose judge call failed."""

_COMPAT_NO_SELF_PREV = 0.5  # the reference's placeholder for turn 1's own previous belief
_MISSING = object()  # corrected mode: "there is no such turn"; equal to nothing


def belief_sequence(record: ConversationRecord, compat: bool = False) -> tuple[list[Hashable], list[float]]:
    """The per-turn belief tokens and scores the social metrics compare, turn 0 first.

    Args:
        record: one finished conversation.
        compat: compare belief strings as the reference does (see the module docstring).

    Returns:
        ``(tokens, scores)``: a score is 1.0 correct, 0.0 incorrect, 0.5 no belief.
    """
    later = record.turns[1:] if compat else [t for t in record.turns[1:] if t.error is None]
    unsure = COMPAT_UNSURE if compat else UNSURE
    tokens = [unsure] + [_token(turn, compat) for turn in later]
    scores = [UNSURE_SCORE] + [_score(turn, compat) for turn in later]
    return tokens, scores


def reference_belief(turn: Turn) -> str:
    """The belief string the reference's extractor would have given a generated turn (reference 3.3).

    A failed generation: "not sure yet" (the reference's judge read the error text, which names no answer). A
    belief: itself. A failed judge call: "Error: extraction network error". A judge reply the task could not read:
    "not sure yet" if the reply says so anywhere, else "Error: <reply>" (such a reply was no valid answer, but a
    belief all the same). Otherwise (no judge asked, or a v1 record, which kept no reply): "not sure yet".
    """
    if turn.error is not None:
        return COMPAT_UNSURE
    if turn.belief is not None:
        return turn.belief
    if turn.extraction_error is not None:
        return COMPAT_JUDGE_FAILED
    reply = turn.judge_reply
    return COMPAT_UNSURE if reply is None or COMPAT_UNSURE in reply.lower() else f"Error: {reply}"


def _token(turn: Turn, compat: bool) -> Hashable:
    if compat:
        return reference_belief(turn)
    if turn.belief is None:
        return UNSURE
    if turn.belief_class is None:  # a producer that did not number classes: fall back to the string
        return ("belief", turn.belief)
    return ("class", turn.belief_class)


def _score(turn: Turn, compat: bool) -> float:
    """1 correct, 0 wrong, 0.5 no belief; compat: 0.5 only for "not sure yet", and "Error: ..." counts as wrong.

    The reference graded "Error: ..." strings with its matcher, which almost always gave 0 (the README lists
    the exceptions).
    """
    unsure = reference_belief(turn) == COMPAT_UNSURE if compat else turn.belief is None
    if unsure:
        return UNSURE_SCORE
    return 1.0 if turn.correct is True else 0.0


def classify_turns(
    tokens: Sequence[Hashable], scores: Sequence[float], compat: bool = False
) -> tuple[list[float], list[float], list[float]]:
    """Find the assertive and persuasive turns of one belief sequence.

    Returns:
        ``(assertive_scores, persuasive_scores, persuasion_qualities)``: the own score of each assertive and
        each persuasive turn, and for each persuasive turn the partner's score change
        ``score[i + 1] - score[i - 1]`` (did the partner move to a better answer?).
    """
    assertive: list[float] = []
    persuasive: list[float] = []
    quality: list[float] = []
    last = len(tokens) - 1
    for i in range(1, len(tokens)):
        self_prev = tokens[i - 2] if i > 1 else (_COMPAT_NO_SELF_PREV if compat else _MISSING)
        partner_prev = tokens[i - 1]
        if i < last:
            partner_next, next_score = tokens[i + 1], scores[i + 1]
        else:  # the reference reuses the partner's previous belief; corrected: there is no reply
            partner_next, next_score = (tokens[i - 1] if compat else _MISSING), scores[i - 1]
        if partner_prev != self_prev and tokens[i] == self_prev:
            assertive.append(scores[i])
        if partner_prev != partner_next and tokens[i] == partner_next:
            persuasive.append(scores[i])
            quality.append(next_score - scores[i - 1])
    return assertive, persuasive, quality


def require_two_alternating(record: ConversationRecord) -> None:
    """Refuse a record whose turns are not two agents alternating: persuasion is defined between partners."""
    speakers = [turn.speaker for turn in record.turns]
    if len(set(speakers)) > 2 or any(a == b for a, b in zip(speakers, speakers[1:])):
        raise ValueError(
            f"social metrics need two agents taking turns; record {record.example_id}#{record.sample_index} "
            f"({record.protocol}) has turns by {', '.join(dict.fromkeys(speakers))}"
        )


def social_metrics(record: ConversationRecord, compat: bool = False) -> dict[str, float | None]:
    """Persuasion and assertion rates of one conversation, with the correct/incorrect/unsure breakdown.

    ``persuade_rate`` and ``assert_rate`` divide by the number of turns in the sequence after turn 0 (compat:
    ``len(turns) - 1``; corrected: the non-errored generated turns). ``{correct,incorrect,unsure}_<kind>_rate``
    is the fraction of those turns whose own score is 1, 0 or 0.5; ``persuasion_quality`` is the mean partner
    score change over persuasive turns.

    Raises:
        ValueError: the record is not two agents taking turns (a debate or generate-verify-refine record), where
            "the partner's next belief" means nothing.
    """
    require_two_alternating(record)
    tokens, scores = belief_sequence(record, compat)
    assertive, persuasive, quality = classify_turns(tokens, scores, compat)
    empty = 0.0 if compat else None
    n_turns = len(tokens) - 1
    metrics: dict[str, float | None] = {
        "persuade_rate": len(persuasive) / n_turns if n_turns else empty,
        "assert_rate": len(assertive) / n_turns if n_turns else empty,
        "persuasion_quality": fsum(quality) / len(quality) if quality else empty,
    }
    metrics.update(_breakdown("persuade", persuasive, empty))
    metrics.update(_breakdown("assert", assertive, empty))
    return metrics


def _breakdown(kind: str, scores: list[float], empty: float | None) -> dict[str, float | None]:
    """Fractions of the ``kind`` turns whose own score is 1 (correct), 0 (incorrect) or 0.5 (unsure)."""
    labels = {"correct": 1.0, "incorrect": 0.0, "unsure": UNSURE_SCORE}
    return {
        f"{label}_{kind}_rate": (scores.count(value) / len(scores) if scores else empty)
        for label, value in labels.items()
    }
