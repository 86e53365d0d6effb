"""Benchmark 5, extraction cost: how many turns do the rules resolve, how many need the LLM judge, at what token cost?

A few conversations per task on the bundled data (``data/``; a test fixture for tasks whose data cannot be
shipped), the real embedded model for agents and judge, extraction mode ``rules_then_judge`` (the default): the
task's parser first, the judge only where the parser finds no answer. All tasks' conversations run at once.

From the records: the share of generated turns whose belief came from the rules (``belief_method`` "rule"), from
the judge ("judge", whatever it answered) or from neither ("none": a turn whose generation failed is not
extracted), and the judge's share of all tokens = judge prompt + completion tokens (``extraction_usage``) / (agents'
prompt + completion tokens + judge's). Tokens are as sent: prefix-cache reuse is not subtracted.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import yaml

from benchmarks.common import ROOT, Row, Section, repeat, stat, stopwatch
from benchmarks.workloads import ConversationSpec, conversation_runner
from coral.backends.embedded import EmbeddedBackend
from coral.backends.models import DEFAULT_MODEL
from coral.records import ConversationRecord, Turn
from coral.sampling import SamplingParams
from coral.store import read_records
from coral.tasks import Task, get_task

UNBUNDLED = {
    "gpqa": "tests/fixtures/gpqa/gpqa_synthetic.csv",
    "explore_tom": "tests/fixtures/explore_tom/synthetic_sample.csv",
    "mbpp_cr": "tests/fixtures/mbpp/mbpp_cr_sample.jsonl",
}
"""Tasks whose configured data file is not bundled -> the test fixture in the same format."""

METHODS = ("rule", "judge", "none")
ALL = "all tasks"


@dataclass(frozen=True)
class Sizes:
    """How much work one repeat does.

    Args:
        tasks: task names (each read with its ``configs/ts_<task>.yaml`` data file and instruction).
        examples: conversations per task (its first examples).
        turns: generated turns per conversation.
        tokens: most tokens per turn.
    """

    tasks: tuple[str, ...]
    examples: int
    turns: int
    tokens: int


ALL_TASKS = ("mmlu_pro", "math", "gsm8k", "commonsense_qa", "anli", "gpqa", "hi_tom", "explore_tom", "mbpp_cr")
QUICK = Sizes(tasks=("mmlu_pro", "math"), examples=2, turns=4, tokens=48)
FULL = Sizes(tasks=ALL_TASKS, examples=3, turns=5, tokens=96)


@dataclass(frozen=True)
class TaskSetup:
    """What a task's config says: constructor arguments, data file and the agents' instruction style."""

    name: str
    task_args: dict
    data: Path
    instruction: str

    def task(self) -> Task:
        return get_task(self.name, **self.task_args)


def task_setup(name: str) -> TaskSetup:
    """Read ``configs/ts_<name>.yaml``; a data file that is not bundled is replaced by its test fixture."""
    path = ROOT / "configs" / f"ts_{name}.yaml"
    data = yaml.safe_load(path.read_text())["data"]["init_args"]
    val_set = data["val_set_init_args"]
    file = ROOT / val_set["file_path"]
    if not file.exists():
        if name not in UNBUNDLED:
            raise FileNotFoundError(f"{path}: data file {file} is missing and no fixture is known for {name!r}")
        file = ROOT / UNBUNDLED[name]
    return TaskSetup(
        name, dict(data.get("task_args") or {}), file, val_set.get("teacher_instruction", "assistant_sbs_short")
    )


@dataclass
class Counts:
    """Extraction methods and tokens over generated turns."""

    methods: Counter = field(default_factory=lambda: Counter(dict.fromkeys(METHODS, 0)))
    judge_tokens: int = 0
    agent_tokens: int = 0
    judge_errors: int = 0

    @property
    def turns(self) -> int:
        return sum(self.methods.values())

    def share(self, method: str) -> float:
        return self.methods[method] / max(self.turns, 1)

    @property
    def judge_token_share(self) -> float:
        return self.judge_tokens / max(self.judge_tokens + self.agent_tokens, 1)

    def add(self, turn: Turn) -> None:
        self.methods[turn.belief_method or "none"] += 1
        self.judge_tokens += turn.extraction_usage.prompt_tokens + turn.extraction_usage.completion_tokens
        self.agent_tokens += turn.usage.prompt_tokens + turn.usage.completion_tokens
        self.judge_errors += turn.extraction_error is not None


def tally(records: list[ConversationRecord]) -> dict[str, Counts]:
    """Counts per task, and over all tasks under the key ``ALL``."""
    counts: dict[str, Counts] = {ALL: Counts()}
    for record in records:
        for turn in record.turns:
            if turn.generated:
                counts.setdefault(record.task, Counts()).add(turn)
                counts[ALL].add(turn)
    return counts


def measure(backend: EmbeddedBackend, sizes: Sizes, seed: int = 0) -> dict[str, Counts]:
    """One run: every task's conversations at once, into temporary stores; the records' counts."""
    setups = [task_setup(name) for name in sizes.tasks]
    tasks = [setup.task() for setup in setups]
    sampling = SamplingParams(temperature=0.2, top_p=0.9, max_tokens=sizes.tokens)
    try:
        with tempfile.TemporaryDirectory(prefix="coral-bench-") as folder:
            runs = []
            for setup, task in zip(setups, tasks):
                spec = ConversationSpec(
                    conversations=sizes.examples,
                    turns=sizes.turns,
                    sampling=sampling,
                    concurrency=sizes.examples,
                    extraction="rules_then_judge",
                    data=setup.data,
                    instruction=setup.instruction,
                )
                runs.append(conversation_runner(backend, DEFAULT_MODEL, task, spec, seed, Path(folder) / setup.name))

            async def run_all() -> None:
                await asyncio.gather(*(runner.run(work) for runner, work in runs))

            asyncio.run(run_all())
            records = [record for setup in setups for record in read_records(Path(folder) / setup.name)]
    finally:
        for task in tasks:
            task.close()
    return tally(records)


def _task_rows(task: str, results: list[dict[str, Counts]]) -> list[Row]:
    counts = [result[task] for result in results]
    shares = ", ".join(f"{method} {stat(counts, partial(Counts.share, method=method)).format(2)}" for method in METHODS)
    return [
        Row(f"{task}: share of turns resolved by", shares, f"(of {counts[0].turns} turns)"),
        Row(f"{task}: judge tokens / all tokens", stat(counts, lambda c: c.judge_token_share), "", 3),
    ]


def benchmark(sizes: Sizes, repeats: int) -> Section:
    """Rule / judge / none shares of turns and the judge's share of tokens, overall and per task."""
    section = Section("extraction", "5. Extraction cost (rules first, LLM judge where rules find nothing)")
    with stopwatch() as elapsed:
        backend = EmbeddedBackend(DEFAULT_MODEL)
        results = repeat(repeats, partial(measure, backend, sizes))
    section.seconds = elapsed()
    for task in (ALL, *sizes.tasks):
        section.rows += _task_rows(task, results)
    section.rows.append(Row("judge calls that failed", stat(results, lambda r: r[ALL].judge_errors), "turns", 0))
    fixtures = [name for name in sizes.tasks if name in UNBUNDLED]
    section.notes += [
        (
            f"{sizes.examples} conversations per task, {sizes.turns} turns of at most {sizes.tokens} tokens, "
            f"{DEFAULT_MODEL} as agents (temperature 0.2, top-p 0.9) and judge (greedy, at most 32 tokens); each "
            "task with its config's data file and instruction"
            + (f" (test fixtures for {', '.join(fixtures)})." if fixtures else ".")
        ),
        (
            "Shares are of generated turns by belief_method; judge tokens are extraction_usage (prompt + "
            "completion) over agents' usage plus extraction_usage, as sent (prefix-cache reuse not subtracted)."
        ),
    ]
    return section
