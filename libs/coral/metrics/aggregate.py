"""Metrics of a whole run: means over the conversations of a results store, a summary table, metrics.json.

Everything is recomputed from the stored records (never from in-memory state), so ``metrics.json`` can be
rebuilt at any time with ``python -m coral.metrics <results dir>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from math import fsum
from pathlib import Path

from coral.atomic import write_atomic
from coral.metrics.conversation import conversation_metrics
from coral.records import ConversationRecord
from coral.store import read_records, store_files

METRICS_FILE = "metrics.json"

HEADLINE = (
    "mv_accuracy",
    "agreement_correctness",
    "agreement",
    "final_answer_accuracy",
    "final_success_rate",
    "ever_correct",
    "persuade_rate",
    "assert_rate",
    "conv_err",
    "total_turns",
)
"""Metrics the summary table shows first, in this order (agreement correctness is Coral's headline, the
majority vote's accuracy that of debate and generate-verify-refine; a run has one or the other)."""

CONVERSATION_ONLY = re.compile(
    r"(agreement|agreement_correctness|n_turns_to_success|persuasion_quality|accuracy_turn_\d+"
    r"|(\w+_)?(persuade|assert)_rate)(\[.*\])?"
)
"""Metrics that need a partner's reply: a one-turn run (the CoT baseline) leaves them out of its summary."""


def aggregate(records: Iterable[ConversationRecord], compat: bool = False) -> dict[str, float]:
    """Mean of every per-conversation metric, ``n_conversations`` and ``accuracy_turn_<k>``.

    A None value (metric undefined for that conversation) is left out of its mean; a metric that is None in
    every conversation is omitted.

    Args:
        records: the conversations of one run.
        compat: use the reference's metric definitions (see ``coral.metrics.conversation``).
    """
    records = list(records)
    result: dict[str, float] = {"n_conversations": len(records)}
    result.update(_means(conversation_metrics(record, compat) for record in records))
    result.update(accuracy_by_turn(records))
    result.update(by_group(records, compat))
    return result


GROUPED = ("agreement_correctness", "final_answer_accuracy")
"""Metrics also reported per group (``record.metadata["groups"]``, e.g. Hi-ToM's question order)."""


def by_group(records: Iterable[ConversationRecord], compat: bool = False) -> dict[str, float]:
    """``<metric>[<key>=<value>]`` for the GROUPED metrics and ``n_conversations[...]``, per group a task names."""
    members: dict[str, list[ConversationRecord]] = {}
    for record in records:
        for key, value in sorted(record.metadata.get("groups", {}).items()):
            members.setdefault(f"{key}={value}", []).append(record)
    result: dict[str, float] = {}
    for label, group in sorted(members.items()):
        means = _means(conversation_metrics(record, compat) for record in group)
        result[f"n_conversations[{label}]"] = len(group)
        result.update({f"{name}[{label}]": means[name] for name in GROUPED if name in means})
    return result


def _means(rows: Iterable[Mapping[str, float | None]]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if value is not None:
                values.setdefault(name, []).append(value)
    return {name: fsum(found) / len(found) for name, found in values.items()}


def accuracy_by_turn(records: Iterable[ConversationRecord]) -> dict[str, float]:
    """``accuracy_turn_<k>``: the share of turn-``k`` beliefs that are correct, over Coral conversations.

    Among conversations whose turn ``k`` was generated without error. Shows whether talking longer helps.
    """
    counts: dict[int, list[int]] = {}  # turn index -> [correct, total]
    for record in records:
        if record.protocol != "coral":  # other protocols report accuracy by round or role instead
            continue
        for index, turn in enumerate(record.turns):
            if turn.generated and turn.error is None:
                count = counts.setdefault(index, [0, 0])
                count[0] += turn.correct is True
                count[1] += 1
    return {f"accuracy_turn_{k}": correct / total for k, (correct, total) in sorted(counts.items())}


def _natural_key(name: str) -> tuple[str, int]:
    """Sort ``accuracy_turn_2`` before ``accuracy_turn_10``."""
    match = re.fullmatch(r"(.*?)(\d+)", name)
    return (match.group(1), int(match.group(2))) if match else (name, -1)


def metric_order(names: Iterable[str]) -> list[str]:
    """The order metrics are shown in: HEADLINE first, then the rest sorted by name (``_2`` before ``_10``)."""
    names = list(names)
    rest = sorted((name for name in names if name not in HEADLINE), key=_natural_key)
    return [name for name in HEADLINE if name in names] + rest


def format_metric(value: float | None) -> str:
    """A metric value as the summary table and the report print it: integers whole, the rest to 4 decimals."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4f}"


def summary_table(metrics: Mapping[str, float | None], conversation: bool = True) -> str:
    """A fixed-width two-column table (metric, value to 4 decimals).

    Headline metrics come first, then the rest sorted by name. Integers (``n_conversations``) print without
    decimals.

    Args:
        metrics: what ``aggregate`` returned.
        conversation: False for a one-turn run, whose table leaves out CONVERSATION_ONLY metrics.
    """
    if not conversation:
        metrics = {name: value for name, value in metrics.items() if not CONVERSATION_ONLY.fullmatch(name)}
    names = metric_order(metrics)
    width = max([len("metric"), *map(len, names)])
    values = {name: format_metric(metrics[name]) for name in names}
    value_width = max([len("value"), *map(len, values.values())])
    lines = [f"{'metric':<{width}}  {'value':>{value_width}}", f"{'-' * width}  {'-' * value_width}"]
    lines += [f"{name:<{width}}  {values[name]:>{value_width}}" for name in names]
    return "\n".join(lines)


def write_metrics(root: str | Path, compat: bool = False) -> dict[str, float]:
    """Recompute the run's metrics from the store under ``root`` and write ``<root>/metrics.json``.

    The file is written to a temporary file and renamed, so a reader never sees half a file.

    Raises:
        FileNotFoundError: ``root`` holds no ``conversations*.jsonl`` file.
        ValueError: a stored line is not a conversation record (the message names file and line).
    """
    root = Path(root)
    if not store_files(root):
        raise FileNotFoundError(f"{root}: no conversations*.jsonl results file here")
    metrics = aggregate(read_records(root), compat=compat)
    _write_json_atomic(root / METRICS_FILE, metrics)
    return metrics


def _write_json_atomic(path: Path, data: Mapping[str, float]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
