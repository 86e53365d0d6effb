"""MBPP-CR: sampled MBPP solutions, each labelled correct or not by running MBPP's own asserts.

Coral's code-reasoning task (reference 2.2) asks two agents "is this code correct?" about a model-written solution.
The paper sampled 10 solutions per train task and 2 per test task (Llama-3.1-405B; ~4k / 1k rows) and labelled
them by execution; the reference repository ships neither data nor builder, so this module is the builder.

For each task: ``samples_per_task`` completions, each with its own seed ``derive_seed(seed, task_id, i)`` (so a
rerun or a resume asks for the same samples); the code is taken from the reply's first fenced block, run with the
task's setup code and asserts in ``coral.sandbox``, and written as one JSON line as soon as it is labelled. A rerun
skips ids already in the output; a sample whose request or sandbox failed is not written, so a rerun retries it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from coral.backends.base import BackendError, ChatBackend, ChatRequest, Message
from coral.errors import DataError
from coral.sampling import SamplingParams
from coral.sandbox import SandboxLimits, check_solution_async, describe_isolation
from coral.seeding import derive_seed
from coral.tasks.base import read_jsonl, require

log = logging.getLogger(__name__)

SPLITS: dict[str, tuple[int, int]] = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
                                      "train": (601, 974)}
"""MBPP task_id ranges (MBPP's README; Hugging Face uses the same), inclusive."""
DEFAULT_SAMPLES = {"prompt": 2, "test": 2, "validation": 2, "train": 10}
"""Samples per task: the paper's 10 per train task and 2 per test task."""
DEFAULT_SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=512)
"""Diverse enough that a task's samples differ and some are wrong; long enough for an MBPP function."""
DEFAULT_LIMITS = SandboxLimits()

PROMPT = (
    "You are an expert Python programmer, and here is your task: {text}\n"
    "Your code should pass tests like this one:\n\n{example_test}\n\n"
    "Write the complete solution as Python code in a single ```python code block."
)
"""The MBPP paper's prompt shape; one assert shows the function's name and signature."""

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class BuildCounts:
    """What one build did. ``errors`` are samples not written (backend or sandbox failure); rerun to retry."""

    tasks: int
    samples: int
    written: int
    skipped: int
    correct: int
    errors: int


def read_mbpp(path: str | Path) -> list[dict[str, Any]]:
    """MBPP's original JSONL, validated; a bad row fails naming file, line and field."""
    rows, seen = [], set()
    for line, row in read_jsonl(path):
        task_id = require(row, "task_id", int, path, line)
        if isinstance(task_id, bool):
            raise DataError(path, line, "task_id", "expected int, got bool")
        require(row, "text", str, path, line)
        tests = require(row, "test_list", list, path, line)
        if not tests or not all(isinstance(t, str) for t in tests):
            raise DataError(path, line, "test_list", "expected a non-empty list of str")
        if "test_setup_code" in row:
            require(row, "test_setup_code", str, path, line)
        if task_id in seen:
            raise DataError(path, line, "task_id", f"duplicate task_id {task_id}")
        seen.add(task_id)
        rows.append(row)
    return rows


def split_rows(rows: Iterable[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The rows of one MBPP split, by task_id range."""
    if split not in SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; known: {', '.join(SPLITS)}")
    low, high = SPLITS[split]
    return [row for row in rows if low <= row["task_id"] <= high]


def solution_messages(row: dict[str, Any]) -> list[Message]:
    """The request for one solution: the task text and its first assert."""
    return [{"role": "user", "content": PROMPT.format(text=row["text"].strip(), example_test=row["test_list"][0])}]


def extract_code(reply: str) -> str:
    """The reply's first fenced code block; an unclosed fence (a cut-off reply) up to the end; else the whole reply."""
    match = _FENCE.search(reply) or _OPEN_FENCE.search(reply)
    return (match.group(1) if match else reply).strip("\r\n")


def _done_ids(path: Path) -> set[str]:
    """Ids already written; a last line cut off by a crash is dropped so appending stays valid JSONL."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (%d bytes)", path, len(data) - keep)
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    return {require(row, "id", str, path, line) for line, row in read_jsonl(path)}


async def build_mbpp_cr(
    mbpp_rows: Sequence[dict[str, Any]],
    backend: ChatBackend,
    model: str | None,
    *,
    samples_per_task: int,
    out_path: str | Path,
    seed: int,
    sampling: SamplingParams = DEFAULT_SAMPLING,
    concurrency: int = 8,
    limits: SandboxLimits = DEFAULT_LIMITS,
) -> BuildCounts:
    """Sample, execute and label ``samples_per_task`` solutions per MBPP row, appending to ``out_path``."""
    if samples_per_task < 1 or concurrency < 1:
        raise ValueError("samples_per_task and concurrency must be >= 1")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_ids(out)
    todo = [(row, i) for row in mbpp_rows for i in range(samples_per_task) if f"{row['task_id']}-{i}" not in done]
    gate = asyncio.Semaphore(concurrency)
    tally = {"written": 0, "correct": 0, "errors": 0}
    with _open_for_append(out) as handle:

        async def one(row: dict[str, Any], index: int) -> None:
            async with gate:
                sample = await _sample(row, index, backend, model, seed, sampling, limits)
            if sample is None:
                tally["errors"] += 1
                return
            _append(handle, sample)  # a short write between awaits: lines never interleave
            tally["written"] += 1
            tally["correct"] += sample["is_correct"]

        jobs = [asyncio.ensure_future(one(row, i)) for row, i in todo]
        try:
            await asyncio.gather(*jobs)
        except BaseException:  # an unexpected failure: stop the rest before the file closes
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise
    total = len(mbpp_rows) * samples_per_task
    return BuildCounts(len(mbpp_rows), total, tally["written"], total - len(todo), tally["correct"], tally["errors"])


async def _sample(row: dict[str, Any], index: int, backend: ChatBackend, model: str | None, seed: int,
                  sampling: SamplingParams, limits: SandboxLimits) -> dict[str, Any] | None:
    task_id = row["task_id"]
    sample_seed = derive_seed(seed, task_id, index)
    try:
        [completion] = await backend.chat(ChatRequest(solution_messages(row), sampling.with_seed(sample_seed), model))
    except BackendError as exc:
        log.warning("MBPP task %s sample %d: request failed: %s", task_id, index, exc)
        return None
    code = extract_code(completion.text)
    setup = row.get("test_setup_code", "")
    result = await check_solution_async(code, row["test_list"], setup, **asdict(limits))
    if result.status == "error":
        log.warning("MBPP task %s sample %d: sandbox error: %s", task_id, index, result.stderr[-500:])
        return None
    return {
        "id": f"{task_id}-{index}",
        "task_id": task_id,
        "sample_index": index,
        "text": row["text"],
        "code": code,
        "test_list": row["test_list"],
        "test_setup_code": setup,
        "is_correct": result.passed,
        "sandbox_status": result.status,
        "seed": sample_seed,
        "model": model,
    }


def _open_for_append(path: Path) -> TextIO:
    return open(path, "a", encoding="utf-8")


def _append(handle: TextIO, row: dict[str, Any]) -> None:
    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    handle.flush()


def main(argv: Sequence[str] | None = None, backend: ChatBackend | None = None) -> BuildCounts:
    """``python -m coral.synthesis.mbpp_cr_builder``: build one split with the embedded backend by default."""
    parser = argparse.ArgumentParser(
        prog="python -m coral.synthesis.mbpp_cr_builder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mbpp", required=True, help="MBPP's original mbpp.jsonl")
    parser.add_argument("--split", choices=sorted(SPLITS), default="test", help="MBPP split, by task_id range")
    parser.add_argument("--samples", type=int, help="solutions per task (default: 10 for train, else 2)")
    parser.add_argument("--out", required=True, help="output JSONL (appended to; existing ids are skipped)")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="packaged model name or checkpoint folder")
    parser.add_argument("--seed", type=int, default=0, help="run seed; per-sample seeds derive from it")
    parser.add_argument("--max-tasks", type=int, help="only the first N tasks of the split")
    parser.add_argument("--concurrency", type=int, default=8, help="samples in flight at once")
    parser.add_argument("--temperature", type=float, default=DEFAULT_SAMPLING.temperature)
    parser.add_argument("--top-p", type=float, default=DEFAULT_SAMPLING.top_p)
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_SAMPLING.max_tokens)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="wall-clock limit of one sandboxed run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    rows = split_rows(read_mbpp(args.mbpp), args.split)[: args.max_tasks]
    log.info("sandbox on this machine: %s", describe_isolation())
    if backend is None:
        from coral.backends import EmbeddedBackend

        backend = EmbeddedBackend(args.model)
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    limits = SandboxLimits(timeout_s=args.timeout_s, cpu_s=max(1, int(args.timeout_s)))
    counts = asyncio.run(build_mbpp_cr(
        rows, backend, args.model, samples_per_task=args.samples or DEFAULT_SAMPLES[args.split], out_path=args.out,
        seed=args.seed, sampling=sampling, concurrency=args.concurrency, limits=limits,
    ))
    print(json.dumps({"out": os.fspath(args.out), "split": args.split, **asdict(counts)}))
    return counts


if __name__ == "__main__":
    main()
