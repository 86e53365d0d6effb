"""Turn each dataset's original files into the splits the paper uses, plus a manifest that records how.

The Coral reference ships no split scripts (reference 2.2), so its MATH, MMLU-Pro and ExploreToM splits cannot
be rebuilt. Here one small function per task states its split rule. Every source row is read by the task's own
loader first, so a malformed row fails naming file, line and field before anything is written; every written
file is read back by the same loader and must give the planned examples. Outputs keep the source's row format
and the manifest pins sources and outputs by SHA-256, so a split can be traced and rebuilt (STYLE 8).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coral.data.files import ROW_FORMATS, read_rows, sha256_file, sha256_path, staged_dir, write_rows
from coral.tasks import TASKS, Example, Task, get_task

PREPARE_VERSION = 1
"""Bump when a split rule or the output format changes: the same sources then give different files."""

MANIFEST = "manifest.json"
MATH_TEST_SIZE = 1000
"""The paper evaluates MATH on "the first 1k test examples"."""
MMLU_PRO_TRAIN_FRACTION = 0.9
"""The paper resplits MMLU-Pro's 12k test questions into 10.8k train / 1.2k test."""
EXPLORE_TOM_SPLITS = (("train", 10_400), ("val", 1_500), ("test", 1_500))
"""The paper's ExploreToM split sizes, used as proportions of however many rows the source has."""
MBPP_CR_BUILDER = "coral.synthesis.mbpp_cr_builder"


class PrepareError(ValueError):
    """The request cannot be carried out (unknown task, wrong sources); malformed data raises DataError instead."""


@dataclass(frozen=True)
class Output:
    """One split file: its name in the output folder, its examples (``source`` = the row to write), CSV header."""

    name: str
    examples: list[Example]
    header: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Loaded:
    """A validated source: its examples, each with ``source`` set to the row as stored, and a CSV's header."""

    path: Path
    examples: list[Example]
    header: tuple[str, ...] | None

    def output(self, split: str, examples: Sequence[Example]) -> Output:
        """A split of these examples, written in this source's format (``split`` + the source's suffix)."""
        if self.path.suffix not in ROW_FORMATS:
            raise PrepareError(f"{self.path}: cannot write rows back in this format (known: {', '.join(ROW_FORMATS)})")
        return Output(split + self.path.suffix, list(examples), self.header)


@dataclass(frozen=True)
class Plan:
    """What a task's split rule produced, before anything is written."""

    rule: str
    outputs: list[Output]
    notes: list[str] = field(default_factory=list)


class SourceReader:
    """Reads a source through the task's own loader (validating every row) and records its hash and size.

    The task is built on first use, so a rule that reads nothing (mbpp_cr) works without a registered task.
    """

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        self.records: list[dict[str, Any]] = []
        self._task: Task | None = None

    def __call__(self, path: Path) -> Loaded:
        """Read and validate ``path`` with the task's loader, keeping its stored rows to write back."""
        if not path.exists():
            raise PrepareError(f"source not found: {path}")
        examples = self.task.read(path)  # the whole source is validated before any split is made
        stored = read_rows(path)
        header = None
        if stored is not None:  # write back the stored rows, not the loader's derived Example.source
            rows, header = stored
            if len(rows) != len(examples):
                raise PrepareError(
                    f"{path}: the {self.task_name} loader gave {len(examples)} examples for "
                    f"{len(rows)} rows, so rows cannot be written back one per example"
                )
            examples = [dataclasses.replace(e, source=row) for e, row in zip(examples, rows)]
        self.records.append({"path": str(path), "rows": len(examples), "sha256": sha256_path(path)})
        return Loaded(path, examples, header)

    @property
    def task(self) -> Task:
        """The registered task named ``task_name``, built on first use."""
        if self._task is None:
            if self.task_name not in TASKS.names():
                raise PrepareError(
                    f"unknown task {self.task_name!r}: no module in coral.tasks registers it yet "
                    f"(registered tasks: {', '.join(TASKS.names())})"
                )
            self._task = get_task(self.task_name)
        return self._task

    def close(self) -> None:
        """Release the task's worker pools, if it was built."""
        if self._task is not None:
            self._task.close()


Preparer = Callable[[SourceReader, list[Path], int], Plan]
PREPARERS: dict[str, Preparer] = {}
"""Split rule per task name."""


def preparer(name: str) -> Callable[[Preparer], Preparer]:
    """Register a task's split rule under its task name."""

    def decorator(function: Preparer) -> Preparer:
        PREPARERS[name] = function
        return function

    return decorator


def prepare_dataset(task: str, sources: Sequence[str | Path], out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Validate ``sources``, split them by ``task``'s rule, write the splits and ``manifest.json`` into ``out``.

    Nothing is written unless every source row is valid and every written file reads back as planned.
    Returns the manifest.
    """
    rule = _lookup(task)
    paths, out = [Path(source) for source in sources], Path(out)
    if not paths:
        raise PrepareError("no --source given")
    reader = SourceReader(task)
    try:
        plan = rule(reader, paths, seed)
        _refuse_overwriting_sources(plan, [Path(record["path"]) for record in reader.records], out)
        with staged_dir(out) as stage:
            written = [_write(reader.task, stage / output.name, output) for output in plan.outputs]
            manifest = {
                "task": task,
                "seed": seed,
                "prepare_version": PREPARE_VERSION,
                "split_rule": plan.rule,
                "notes": plan.notes,
                "sources": reader.records,
                "outputs": written,
            }
            text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
            (stage / MANIFEST).write_text(text, encoding="utf-8")
    finally:
        reader.close()
    return manifest


def _write(task: Task, path: Path, output: Output) -> dict[str, Any]:
    """Write one split, check the task's loader reads it back as the same examples, and describe it."""
    path.parent.mkdir(parents=True, exist_ok=True)  # ANLI keeps its R<n>/ folders
    write_rows(path, [example.source for example in output.examples], output.header)
    expected = [example.id for example in output.examples]
    if [example.id for example in task.load(path)] != expected:
        raise PrepareError(f"{output.name}: the written rows do not read back as the planned examples")
    return {"path": output.name, "rows": len(expected), "sha256": sha256_file(path)}


def _lookup(task: str) -> Preparer:
    if task in PREPARERS:
        return PREPARERS[task]
    close = difflib.get_close_matches(task, PREPARERS, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise PrepareError(f"unknown task {task!r}{hint} (known: {', '.join(sorted(PREPARERS))})")


def _refuse_overwriting_sources(plan: Plan, sources: list[Path], out: Path) -> None:
    """``--source data/x/test.jsonl --out data/x`` would replace a file that was read by its own split."""
    files = {path.resolve() for path in sources if path.is_file()}
    for output in plan.outputs:
        if (out / output.name).resolve() in files:
            raise PrepareError(f"{out / output.name} is also a source; choose another --out")


# -- helpers shared by the rules -------------------------------------------------------------------------


def _one(sources: list[Path], task: str) -> Path:
    if len(sources) != 1:
        raise PrepareError(f"{task} takes exactly one --source, got {len(sources)}")
    return sources[0]


def _shuffled(examples: Sequence[Example], seed: int) -> list[Example]:
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    return shuffled


_SPLIT_WORDS = {"train": "train", "dev": "dev", "val": "dev", "validation": "dev", "test": "test"}
_SPLIT_ORDER = ("train", "dev", "test")


def _official_split(path: Path) -> str:
    """``train``, ``dev`` or ``test``, from the words of a file name (``dev_rand_split.jsonl`` -> dev)."""
    found = {_SPLIT_WORDS[word] for word in re.split(r"[^a-z0-9]+", path.name.lower()) if word in _SPLIT_WORDS}
    if len(found) != 1:
        raise PrepareError(f"{path}: cannot tell the split from the file name (expected one of train, dev, test)")
    return found.pop()


def _copy_official_splits(read: SourceReader, named: list[tuple[str, Path]], rule: str) -> Plan:
    """Each (split name, source) validated and copied whole; two sources for one split is an error."""
    outputs: dict[str, Output] = {}
    for split, source in named:
        loaded = read(source)
        output = loaded.output(split, loaded.examples)
        if output.name in outputs:
            raise PrepareError(f"two sources give {output.name}; pass one file per split")
        outputs[output.name] = output
    return Plan(rule, [outputs[name] for name in sorted(outputs, key=_split_order)])


def _split_order(name: str) -> tuple[str, int]:
    """``R1/train.jsonl`` before ``R1/dev.jsonl`` before ``R1/test.jsonl`` before ``R2/...``."""
    folder, _, file = name.rpartition("/")
    return folder, _SPLIT_ORDER.index(file.split(".")[0])


# -- one rule per task -----------------------------------------------------------------------------------


@preparer("math")
def prepare_math(read: SourceReader, sources: list[Path], seed: int) -> Plan:
    """MATH: all train problems, and the first 1,000 test problems (the paper's evaluation set)."""
    if len(sources) == 1:
        train_source, test_source = sources[0] / "train", sources[0] / "test"
        if not (train_source.is_dir() and test_source.is_dir()):
            raise PrepareError(f"{sources[0]}: not a MATH/ root folder with train/ and test/ (or pass TRAIN TEST)")
    elif len(sources) == 2:
        train_source, test_source = sources
    else:
        raise PrepareError("math takes the MATH/ root folder, or two sources in the order TRAIN TEST")
    all_train = read(train_source).examples
    all_test = read(test_source).examples
    test_ids = {example.id for example in all_test}
    # PRM800K's train.jsonl also holds 4.5k MATH test problems; the paper trains on the 7.5k train problems.
    train = [e for e in all_train if e.id not in test_ids and not e.id.startswith("test/")]
    notes = []
    if len(train) < len(all_train):
        notes.append(f"train: left out {len(all_train) - len(train)} MATH test problems found in the train source")
    rule = (
        "train.jsonl: every train-source problem that is not a MATH test problem (unique_id under test/ or "
        f"present in the test source), in source order; test.jsonl: the first {MATH_TEST_SIZE} problems of the "
        "test source, in its order (a MATH/<split> folder is read in sorted path order). Per-problem files are "
        "written as PRM800K rows: answer = last \\boxed{} of solution, subject = type, level as an int, "
        "unique_id = <split>/<subject>/<n>.json. The seed is not used."
    )
    outputs = [Output("train.jsonl", _as_prm800k(train)), Output("test.jsonl", _as_prm800k(all_test[:MATH_TEST_SIZE]))]
    return Plan(rule, outputs, notes)


def _as_prm800k(examples: Sequence[Example]) -> list[Example]:
    """PRM800K rows pass through; an original per-problem file becomes the row PRM800K has for that problem."""
    return [example if "answer" in example.source else _prm800k_example(example) for example in examples]


def _prm800k_example(example: Example) -> Example:
    row = example.source
    level = row.get("level")
    match = re.fullmatch(r"Level (\d+)", level) if isinstance(level, str) else None
    prm800k_row = {
        "problem": row["problem"],
        "solution": row["solution"],
        "answer": example.answer,
        "subject": row.get("type"),
        "level": int(match.group(1)) if match else level,  # 2 train problems have "Level ?": kept as written
        "unique_id": example.id,
    }
    return dataclasses.replace(example, source=prm800k_row)


@preparer("mmlu_pro")
def prepare_mmlu_pro(read: SourceReader, sources: list[Path], seed: int) -> Plan:
    """MMLU-Pro: the test set resplit 90/10 (10.8k/1.2k in the paper) after a seeded shuffle."""
    loaded = read(_one(sources, "mmlu_pro"))
    shuffled = _shuffled(loaded.examples, seed)
    n_train = round(len(shuffled) * MMLU_PRO_TRAIN_FRACTION)
    rule = (
        f"rows shuffled with random.Random(seed); the first round({MMLU_PRO_TRAIN_FRACTION} * n) are train, the "
        "rest test (the paper resplits the 12k test set into 10.8k/1.2k); each file keeps the shuffled order."
    )
    return Plan(rule, [loaded.output("train", shuffled[:n_train]), loaded.output("test", shuffled[n_train:])])


@preparer("explore_tom")
def prepare_explore_tom(read: SourceReader, sources: list[Path], seed: int) -> Plan:
    """ExploreToM: train/val/test in the paper's 10.4k/1.5k/1.5k proportions after a seeded shuffle."""
    loaded = read(_one(sources, "explore_tom"))
    shuffled = _shuffled(loaded.examples, seed)
    total = sum(size for _, size in EXPLORE_TOM_SPLITS)
    n_train = round(len(shuffled) * EXPLORE_TOM_SPLITS[0][1] / total)
    n_val = round(len(shuffled) * EXPLORE_TOM_SPLITS[1][1] / total)
    n_seen = n_train + n_val
    parts = {"train": shuffled[:n_train], "val": shuffled[n_train:n_seen], "test": shuffled[n_seen:]}
    rule = (
        "rows (questions) shuffled with random.Random(seed), then cut into train/val/test in the paper's "
        "10.4k/1.5k/1.5k proportions: n_train = round(n * 10400/13400), n_val = round(n * 1500/13400), test the "
        "rest; each file keeps the shuffled order."
    )
    return Plan(rule, [loaded.output(split, examples) for split, examples in parts.items()])


def _evaluation_only(task: str, paper: str) -> Preparer:
    def prepare_eval_only(read: SourceReader, sources: list[Path], seed: int) -> Plan:
        loaded = read(_one(sources, task))
        rule = f"evaluation only ({paper}): every row validated and copied to test, in source order. "
        return Plan(rule + "The seed is not used.", [loaded.output("test", loaded.examples)])

    prepare_eval_only.__doc__ = f"{task}: evaluation only ({paper}); all rows go to the test file."
    return prepare_eval_only


PREPARERS["gpqa"] = _evaluation_only("gpqa", "the paper evaluates on GPQA main, 448 questions")
PREPARERS["hi_tom"] = _evaluation_only("hi_tom", "the paper evaluates on 600 Hi-ToM questions")


def _official(task: str) -> Preparer:
    def prepare_official(read: SourceReader, sources: list[Path], seed: int) -> Plan:
        rule = (
            "official splits kept: each source validated and copied whole, named by the split in its file name "
            "(train; dev, val or validation -> dev; test), in source order. The seed is not used."
        )
        return _copy_official_splits(read, [(_official_split(source), source) for source in sources], rule)

    prepare_official.__doc__ = f"{task}: the official splits, validated and copied under normalised names."
    return prepare_official


PREPARERS["gsm8k"] = _official("gsm8k")
PREPARERS["commonsense_qa"] = _official("commonsense_qa")


@preparer("anli")
def prepare_anli(read: SourceReader, sources: list[Path], seed: int) -> Plan:
    """ANLI: the official per-round splits, kept in the zip's R<round>/<split>.jsonl layout (the loader's round)."""
    files: list[Path] = []
    for source in sources:
        files.extend(sorted(source.glob("R*/*.jsonl")) if source.is_dir() else [source])
    if not files:
        raise PrepareError("anli: no R<round>/<split>.jsonl files under the given folder")
    rule = (
        "official splits kept: each anli_v1.0/R<n>/<split>.jsonl validated and copied whole to R<n>/<split>.jsonl "
        "(dev, val or validation -> dev), in source order. The seed is not used."
    )
    return _copy_official_splits(read, [(f"R{_anli_round(f)}/{_official_split(f)}", f) for f in files], rule)


def _anli_round(path: Path) -> str:
    """From the ``R<n>`` folder, as the loader reads it, else from a file name such as ``dev_r2.jsonl``."""
    for part in (path.parent.name, path.stem):
        match = re.search(r"(?:^|[^a-z])r([123])(?:$|[^0-9])", part.lower())
        if match:
            return match.group(1)
    raise PrepareError(f"{path}: cannot tell the ANLI round (expected a folder R1, R2 or R3)")


@preparer("mbpp_cr")
def prepare_mbpp_cr(read: SourceReader, sources: list[Path], seed: int) -> Plan:
    """MBPP-CR is sampled from a model and labelled by running MBPP's asserts, so no split rule can make it.

    Not delegated: the builder needs a model and its own options, and its output depends on the model.
    """
    missing = "" if _module_exists(MBPP_CR_BUILDER) else " (not in this checkout yet)"
    raise PrepareError(
        "mbpp_cr is not a split of existing data: it is built from model samples executed against MBPP's tests, "
        f"with python -m {MBPP_CR_BUILDER}{missing}, e.g. --mbpp mbpp.jsonl --split train "
        "--out data/mbpp_cr/train.jsonl (and --split test)"
    )


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
