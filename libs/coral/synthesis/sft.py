"""SFT examples from conversation records: which generated turns a model should learn to say (reference 5.2).

An example is the prompt the speaker saw (``agent_view`` of the turns before it, with its system prompt) and the
text it said. Only the conversation's own path (``record.turns``) is used; tree siblings are for preference pairs.
Errored turns never become examples.

Modes:

- ``all``: every generated turn. This is what the reference's iterative driver trains on
  (``success_conv_only=False``), wrong answers included.
- ``agreement`` (default): every generated turn of conversations that ended in a *correct* agreement
  (``agreement_correctness == 1`` as ``coral.metrics`` defines it: both agreeing beliefs correct). The reference's
  ``success_conv_only`` with its default ``correctness_metric``; the default here because training on wrong
  answers is what self-improvement should avoid.
- ``correct``: every turn whose own belief is correct (its full history is in its prompt), plus the
  ``context_turns`` generated turns just before it as examples of their own (the reference's ``filter_by_turns``
  with ``add_prev_n_turns``, whose default there is unbounded; here 0).

Then: identical (prompt, target) examples are dropped (``dedupe``), each problem keeps at most
``max_per_problem`` examples (a seeded choice), and the whole set is shuffled with a seeded shuffle (the reference
shuffles unseeded and keeps the first conversations per example instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from coral.backends.base import Message
from coral.metrics import conversation_metrics
from coral.records import ConversationRecord
from coral.synthesis.preferences import (
    Origin,
    by_problem,
    origin_of,
    per_problem_summary,
    prompt_at,
    prompt_key,
    seeded_shuffle,
)

SFTMode = Literal["all", "agreement", "correct"]
SFT_MODES = get_args(SFTMode)
SFT_FILTERS = ("duplicate", "problem_cap")


@dataclass(frozen=True)
class SFTSettings:
    """Which turns of which conversations become SFT examples."""

    mode: SFTMode = "agreement"
    """all | agreement (conversations that agreed on a correct answer) | correct (correct turns)."""
    context_turns: int = 0
    """Mode ``correct``: also this many generated turns before each correct turn (reference add_prev_n_turns)."""
    max_per_problem: int | None = None
    """Examples kept per problem over all its conversations (seeded choice). None: no cap."""
    seed: int = 0
    """Seeds the per-problem choice and the final shuffle."""
    dedupe: bool = True
    """Drop an example whose (prompt, target) was already taken."""

    def __post_init__(self) -> None:
        if self.mode not in SFT_MODES:
            raise ValueError(f"SFTSettings.mode must be one of {', '.join(SFT_MODES)}, got {self.mode!r}")
        if self.context_turns < 0:
            raise ValueError(f"SFTSettings.context_turns must be >= 0, got {self.context_turns}")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            raise ValueError(f"SFTSettings.max_per_problem must be >= 1 or None, got {self.max_per_problem}")


@dataclass(frozen=True)
class SFTExample:
    """One target turn and the messages its speaker saw before saying it."""

    prompt: list[Message]
    target: str
    origin: Origin
    seed: int | None

    def provenance(self) -> dict[str, Any]:
        """The example's line in the dataset's provenance file."""
        return {**asdict(self.origin), "seed": self.seed}


def selected_turns(record: ConversationRecord, settings: SFTSettings) -> list[int]:
    """Indices (ascending) of the record's turns that become examples under ``settings.mode``."""
    usable = [i for i, turn in enumerate(record.turns) if turn.generated and turn.error is None]
    if settings.mode == "all":
        return usable
    if settings.mode == "agreement":
        return usable if conversation_metrics(record)["agreement_correctness"] == 1.0 else []
    chosen: set[int] = set()
    for i in usable:
        if record.turns[i].correct is True:
            chosen.update(j for j in usable if i - settings.context_turns <= j <= i)
    return sorted(chosen)


def select_sft(records: Sequence[ConversationRecord], settings: SFTSettings) -> tuple[list[SFTExample], dict[str, Any]]:
    """SFT examples and counts of what was seen and what each step dropped.

    ``counts["examples_possible"]`` equals ``counts["examples"]`` plus the sum of ``counts["dropped"]``.
    """
    counts: dict[str, Any] = {
        "records": len(records),
        "problems": 0,
        "conversations_used": 0,
        "generated_turns": 0,
        "errored_turns": 0,
        "examples_possible": 0,
        "dropped": {name: 0 for name in SFT_FILTERS},
        "examples": 0,
    }
    seen: set[tuple[str, str]] = set()
    kept: list[SFTExample] = []
    sizes = []
    for (task, example_id), trees in by_problem(records).items():
        counts["problems"] += 1
        problem_examples = []
        for record in trees:
            generated = [turn for turn in record.turns if turn.generated]
            counts["generated_turns"] += len(generated)
            counts["errored_turns"] += sum(1 for turn in generated if turn.error is not None)
            indices = selected_turns(record, settings)
            counts["conversations_used"] += bool(indices)
            counts["examples_possible"] += len(indices)
            for index in indices:
                example = SFTExample(prompt_at(record, index), record.turns[index].text, origin_of(record, index),
                                     record.turns[index].seed)
                key = (prompt_key(example.prompt), example.target)
                if settings.dedupe and key in seen:
                    counts["dropped"]["duplicate"] += 1
                    continue
                seen.add(key)
                problem_examples.append(example)
        capped = seeded_shuffle(problem_examples, settings.seed, "problem", task, example_id)
        capped = capped[: settings.max_per_problem]
        counts["dropped"]["problem_cap"] += len(problem_examples) - len(capped)
        sizes.append(len(capped))
        kept.extend(capped)
    examples = seeded_shuffle(kept, settings.seed, "order")
    counts["examples"] = len(examples)
    counts["per_problem"] = per_problem_summary(sizes, settings.max_per_problem)
    return examples, counts
