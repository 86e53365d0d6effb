"""The report model: results folders read from their files, and the per-conversation facts the report shows.

A ``Run`` is what one folder holds: the records of its store (``coral.store.read_records``, the single source),
the metrics of ``metrics.json`` (recomputed from the records when the file is missing) and the resolved
``config.yaml``. Everything else here is a pure function of those, so a report can be rebuilt from the folder at
any time and tests can check the numbers without a browser.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coral.metrics import aggregate, conversation_metrics
from coral.metrics.aggregate import METRICS_FILE
from coral.records import ConversationRecord
from coral.store import read_records, store_files

CONFIG_FILE = "config.yaml"
"""The resolved configuration ``trainer.py`` saves beside the records."""


@dataclass
class Conversation:
    """What the report's list and plots need of one record, computed once."""

    record: ConversationRecord
    outcome: str
    agreed_at: int | None  # index of the first turn that agreed with its partner; None: never agreed
    errored: bool
    tokens: int  # prompt + completion + judge tokens of every turn and tree sibling: what the conversation cost


@dataclass
class Run:
    """One results folder.

    Args:
        folder: the results folder.
        label: how the report names the run (the folder's name, made unique among the runs compared).
        conversations: one per stored record, in store order.
        metrics: ``metrics.json``, or the same computation over the records when the file is missing.
        metrics_from_file: whether ``metrics`` came from ``metrics.json``.
        config: ``config.yaml`` as a mapping ({} when the folder has none).
    """

    folder: Path
    label: str
    conversations: list[Conversation]
    metrics: dict[str, float]
    metrics_from_file: bool
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def compat(self) -> bool:
        """Whether the metrics use the reference's definitions (``--model.compat_metrics``)."""
        return _compat(self.config)


def load_runs(folders: Sequence[str | Path]) -> list[Run]:
    """Read every folder (see ``load_run``), labelled by folder name; a name shared by two folders gets its parent."""
    paths = [Path(folder) for folder in folders]
    names = Counter(path.resolve().name for path in paths)
    labels = [path.resolve().name if names[path.resolve().name] == 1 else _parent_label(path) for path in paths]
    return [load_run(path, label) for path, label in zip(paths, labels, strict=True)]


def _parent_label(path: Path) -> str:
    return "/".join(path.resolve().parts[-2:])


def load_run(folder: str | Path, label: str | None = None) -> Run:
    """One results folder as the report sees it.

    Raises:
        FileNotFoundError: the folder holds no ``conversations*.jsonl`` file.
        ValueError: a stored line is not a record, or metrics.json / config.yaml does not parse (file named).
    """
    folder = Path(folder)
    if not store_files(folder):
        raise FileNotFoundError(f"{folder}: no conversations*.jsonl results file here")
    config = _read_config(folder / CONFIG_FILE)
    records = read_records(folder)
    metrics_path = folder / METRICS_FILE
    if metrics_path.is_file():
        metrics = _read_json(metrics_path)
    else:
        metrics = aggregate(records, compat=_compat(config))
    conversations = [_conversation(record) for record in records]
    return Run(folder, label or folder.resolve().name, conversations, metrics, metrics_path.is_file(), config)


def _read_json(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of metric names to values")
    return data


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: not YAML ({exc})") from None
    return data if isinstance(data, dict) else {}


def _compat(config: Mapping[str, Any]) -> bool:
    """``model.init_args.compat_metrics`` of a resolved config (False when the config says nothing)."""
    model = config.get("model")
    arguments = (model.get("init_args") or {}) if isinstance(model, Mapping) else {}
    return bool(arguments.get("compat_metrics", False))


# ---------------------------------------------------------------------------------------------- one conversation
def _conversation(record: ConversationRecord) -> Conversation:
    metrics = conversation_metrics(record)
    return Conversation(
        record=record,
        outcome=outcome(record, metrics),
        agreed_at=next((turn.index for turn in record.turns if turn.agreement), None),
        errored=bool(metrics["conv_err"]),
        tokens=token_cost(record),
    )


def outcome(record: ConversationRecord, metrics: Mapping[str, float | None]) -> str:
    """The conversation's outcome: correct, incorrect, or ``no answer``.

    A Coral conversation's is its last belief's grade (``no answer`` when no generated turn committed to one); a
    protocol that votes (debate, generate-verify-refine) has its vote's.

    Args:
        record: the conversation.
        metrics: its ``conversation_metrics`` (``final_answer_accuracy`` is the last belief's grade).
    """
    if record.outcome is not None:  # a vote: correct only when it picked the gold (a tie scoring 1/3 is not)
        if record.outcome.decided_by == "no_valid_answer":
            return "no answer"
        return "correct" if record.outcome.correct == 1.0 else "incorrect"
    if metrics["final_answer_accuracy"]:
        return "correct"
    answered = any(turn.generated and turn.belief is not None for turn in record.turns)
    return "incorrect" if answered else "no answer"


def token_cost(record: ConversationRecord) -> int:
    """Every token the conversation cost: prompts, completions and judge calls, tree siblings included."""
    turns = [*record.turns, *(sibling for turn in record.turns for sibling in turn.siblings)]
    usages = [usage for turn in turns for usage in (turn.usage, turn.extraction_usage)]
    return sum(usage.prompt_tokens + usage.completion_tokens for usage in usages)


# ---------------------------------------------------------------------------------------------- series to plot
def numbered(run: Run, prefix: str) -> dict[int, float]:
    """``<prefix><k>`` of the run's metrics, by k (``accuracy_turn_`` by turn, ``mv_accuracy_round_`` by round)."""
    found = {name[len(prefix) :]: value for name, value in run.metrics.items() if name.startswith(prefix)}
    return {int(k): value for k, value in found.items() if k.isdigit()}


def accuracy_by_turn(run: Run) -> dict[int, float]:
    """``accuracy_turn_<k>`` of the run's metrics, by turn k."""
    return numbered(run, "accuracy_turn_")


ROLE_ACCURACY = {"generator": "generator_accuracy", "refiner": "refiner_accuracy", "vote (MV@k)": "mv_accuracy"}
"""Generate-verify-refine: accuracy after each answering role and after the vote, as the report shows them."""


def accuracy_by_role(run: Run) -> dict[str, float]:
    """A generate-verify-refine run's accuracy by role (empty for other protocols)."""
    if "refiner_accuracy" not in run.metrics:
        return {}
    return {role: run.metrics[name] for role, name in ROLE_ACCURACY.items() if name in run.metrics}


def agreement_by_turn(run: Run) -> dict[int, float]:
    """By turn k (1..the longest conversation): the share of conversations that had agreed by turn k."""
    last = max((len(c.record.turns) - 1 for c in run.conversations), default=0)
    total = len(run.conversations)
    agreed = [c.agreed_at for c in run.conversations if c.agreed_at is not None]
    return {k: sum(at <= k for at in agreed) / total for k in range(1, last + 1)}


def turns_to_agreement(run: Run) -> dict[str, float]:
    """Share of conversations by the turn they first agreed at (``"never"`` last), for a histogram."""
    total = len(run.conversations) or 1
    counts = Counter(c.agreed_at for c in run.conversations)
    shares = {str(k): counts[k] / total for k in sorted(k for k in counts if k is not None)}
    shares["never"] = counts[None] / total
    return shares


SOCIAL_KINDS = {"persuade": "persuasive", "assert": "assertive"}
"""The social metrics split by the turn's own correctness: ``<label>_<kind>_rate``."""


def social_split(run: Run, kind: str) -> dict[str, float]:
    """``{correct, incorrect, unsure}_<kind>_rate`` of the run's metrics (missing: no such turn in the run)."""
    labels = ("correct", "incorrect", "unsure")
    return {label: run.metrics[name] for label in labels if (name := f"{label}_{kind}_rate") in run.metrics}


# ---------------------------------------------------------------------------------------------- what was run
def setup(run: Run) -> dict[str, str]:
    """Task, protocol, models and seeds, as the records say they were made (a record names all of these)."""
    if not run.conversations:
        return {"conversations": "0"}
    first = run.conversations[0].record
    return {
        "task": first.task,
        "protocol": first.protocol,
        "models": ", ".join(f"{speaker}: {model}" for speaker, model in first.agents.items()),
        "run seed": str(first.run_seed),
        "max turns": str(first.max_turns),
        "conversations": str(len(run.conversations)),
        "config hash": first.config_hash,
        "metrics": ("metrics.json" if run.metrics_from_file else "recomputed (no metrics.json)")
        + (", compat definitions" if run.compat else ""),
    }


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model.init_args.max_turns": 10, ...}``: nested mappings as dotted keys (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


MISSING = "(not set)"


def config_differences(runs: Iterable[Run]) -> dict[str, list[Any]]:
    """Config keys whose value is not the same in every run, with each run's value (``MISSING`` where absent)."""
    flat = [flatten(run.config) for run in runs]
    keys = sorted({key for config in flat for key in config})
    values = {key: [config.get(key, MISSING) for config in flat] for key in keys}
    return {key: row for key, row in values.items() if any(value != row[0] for value in row)}
