"""Benchmark 1, orchestration ceiling: how many turns per second coral itself can drive in one process.

The model is a zero-latency scripted backend (``InstantBackend``: a canned reply, no call log, no token
counting), so everything measured is coral: the protocol, seeds, retry wrapper, rule-based belief extraction,
grading, belief classes, per-conversation metrics and the durable results store (a real ``ResultStore`` in a
temporary folder, fsync included). ``coral.backends.ScriptedBackend`` is not used because its own work (a call
log that keeps every request, word-counting every prompt) would be counted as coral's. The two agents answer
different letters (MMLU-Pro) or different boxed values (MATH) on every turn, so no conversation stops early: each
runs exactly ``turns`` generated turns.

MATH is reported separately: its grading and agreement run math-verify in a worker pool (two processes by
default), so it measures that pool rather than the orchestration.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from benchmarks.common import ROOT, Check, Row, Section, repeat, stat, stopwatch
from benchmarks.workloads import ConversationSpec, questions, run_conversations
from coral.backends.base import ChatRequest, Completion
from coral.sampling import SamplingParams
from coral.tasks import get_task

TARGET_TURNS_PER_S = 5000.0

DATA = {"mmlu_pro": ROOT / "data/mmlu_pro/test.jsonl", "math": ROOT / "data/math/test.jsonl"}

_REASONING = (
    "Let me work through this step by step. First I restate what the question asks and which quantities are "
    "given. Then I check each option against those quantities, and I compare my result with what you proposed "
    "in your last message, since one of the steps there looks off to me."
)
_ANSWERS = {
    "mmlu_pro": ("The correct answer is (A).", "The correct answer is (B)."),
    "math": ("So the answer is $\\boxed{\\frac{1}{2}}$.", "So the answer is $\\boxed{0.75}$."),
}


@dataclass(frozen=True)
class Sizes:
    """How much work one repeat does.

    Args:
        conversations: conversations per repeat (bundled questions, each sampled as often as needed).
        turns: generated turns per conversation (every conversation runs all of them).
        concurrency: conversations in flight at once.
    """

    conversations: int
    turns: int = 10
    concurrency: int = 1000


QUICK = {"mmlu_pro": Sizes(500), "math": Sizes(20)}
FULL = {"mmlu_pro": Sizes(5000), "math": Sizes(100)}


@dataclass(frozen=True)
class Result:
    task: str
    conversations: int
    turns: int
    seconds: float
    cpu_seconds: float
    """CPU time of this process (all threads) over the run: the cost that does not depend on a busy machine."""

    @property
    def turns_per_s(self) -> float:
        return self.turns / self.seconds

    @property
    def us_per_turn(self) -> float:
        return 1e6 * self.seconds / self.turns

    @property
    def cpu_us_per_turn(self) -> float:
        return 1e6 * self.cpu_seconds / self.turns


class InstantBackend:
    """A zero-latency ChatBackend whose answer depends on the turn's parity, so the two agents never agree.

    Turn k's prompt holds the system message and k earlier turns, so the answerer always gets one parity and the
    asker the other.
    """

    def __init__(self, task: str) -> None:
        self.replies = tuple(Completion(f"{_REASONING} {answer}", "stop", 200, 60, 0.0) for answer in _ANSWERS[task])

    async def chat(self, request: ChatRequest) -> list[Completion]:
        return [self.replies[len(request.messages) % 2]] * request.n

    async def end_session(self, session_id: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


def measure(task_name: str, sizes: Sizes, seed: int = 0) -> Result:
    """One timed run of ``sizes.conversations`` conversations into a fresh store; checks every turn ran."""
    task = get_task(task_name)
    spec = ConversationSpec(
        sizes.conversations, sizes.turns, SamplingParams(max_tokens=256), sizes.concurrency, data=DATA[task_name]
    )
    try:
        if task_name == "math":  # start the math-verify pool outside the timed part
            [(example, _)] = questions(task, spec.data, 1)
            asyncio.run(task.equivalent("1", "2", example))
        run = run_conversations(InstantBackend(task_name), "scripted", task, spec, seed)
    finally:
        task.close()
    unfinished = [r.key for r in run.records if r.stop_reason != "max_turns" or len(r.turns) != sizes.turns + 1]
    if unfinished:
        raise RuntimeError(f"orchestration benchmark: conversations that did not run all turns: {unfinished[:3]}")
    return Result(task_name, len(run.records), run.generated_turns, run.seconds, run.cpu_seconds)


def _report_task(section: Section, task_name: str, sizes: Sizes, results: list[Result]) -> None:
    per_s = stat(results, lambda r: r.turns_per_s)
    in_flight = min(sizes.concurrency, sizes.conversations)
    section.rows += [
        Row(
            f"{task_name}: {sizes.conversations} conversations x {sizes.turns} turns, {in_flight} in flight",
            per_s,
            "turns/s",
            0,
        ),
        Row(f"{task_name}: coral overhead per turn (wall)", stat(results, lambda r: r.us_per_turn), "us/turn", 0),
        Row(f"{task_name}: coral CPU time per turn", stat(results, lambda r: r.cpu_us_per_turn), "us/turn", 0),
    ]
    if task_name == "mmlu_pro":
        section.checks.append(Check("orchestration turns/s (MMLU-Pro)", per_s.median, ">=", TARGET_TURNS_PER_S))


def benchmark(sizes: dict[str, Sizes], repeats: int) -> Section:
    """Turns per second and microseconds per turn, per task in ``sizes`` (MMLU-Pro carries the target)."""
    section = Section("orchestration", "1. Orchestration ceiling (zero-latency scripted backend, one process)")
    with stopwatch() as elapsed:
        for task_name, task_sizes in sizes.items():
            _report_task(section, task_name, task_sizes, repeat(repeats, partial(measure, task_name, task_sizes)))
    section.seconds = elapsed()
    section.notes += [
        (
            "Counted: generated turns of all conversations / wall time of ConversationRunner.run (from the first "
            "request to the last record fsynced). Included: protocol, seed derivation, retry wrapper, rule-based "
            "extraction, grading, belief classes, per-conversation metrics, JSON encoding and the durable store."
        ),
        "The agents always disagree, so every conversation runs all its turns (stop reason max_turns).",
        "MATH grading and agreement go through the math-verify worker pool, which bounds its rate; it has no target.",
    ]
    return section
