"""Workloads several benchmarks share: coral conversations over a real backend, with every completion's tokens tallied.

``TokenTally`` wraps any ChatBackend and adds up what the engine reported for each request: prompt tokens sent,
prompt tokens it reused from its prefix cache (``cached_prompt_tokens``), and completion tokens. Conversation
records do not keep the cached count, so benchmarks that need it read the tally.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import ROOT, stopwatch
from coral.backends.base import ChatBackend, ChatRequest, Completion
from coral.beliefs import BeliefExtractor
from coral.conversation import Agent, ConversationRunner, CoralProtocol, RunSettings
from coral.records import ConversationRecord
from coral.sampling import SamplingParams
from coral.store import ResultStore, read_records
from coral.tasks import Example, MMLUProTask, Task

MMLU_PRO = ROOT / "data/mmlu_pro/test.jsonl"


@dataclass
class Tokens:
    """Token counts summed over requests (a request for n completions runs its prompt once: it counts once)."""

    requests: int = 0
    prompt: int = 0
    cached: int = 0
    completion: int = 0

    @property
    def recomputed(self) -> int:
        """Prompt tokens the engine actually ran (sent minus reused from its prefix cache)."""
        return self.prompt - self.cached

    @property
    def computed(self) -> int:
        """Every token the engine ran a forward pass for: recomputed prompt tokens plus generated tokens."""
        return self.recomputed + self.completion

    def add(self, completions: list[Completion]) -> None:
        """One request's completions: each reports the shared prompt, which the engine ran once for all of them."""
        self.requests += 1
        self.prompt += completions[0].prompt_tokens
        self.cached += completions[0].cached_prompt_tokens
        self.completion += sum(completion.completion_tokens for completion in completions)


class TokenTally:
    """A ChatBackend that forwards to ``inner`` and tallies the tokens of every completion it returns.

    ``shapes`` keeps (prompt tokens recomputed, completion tokens) per completion, in completion order, so a
    benchmark can replay the same amount of work in another shape.
    """

    def __init__(self, inner: ChatBackend) -> None:
        self.inner = inner
        self.tokens = Tokens()
        self.shapes: list[tuple[int, int]] = []

    async def chat(self, request: ChatRequest) -> list[Completion]:
        completions = await self.inner.chat(request)
        self.tokens.add(completions)
        for completion in completions:
            self.shapes.append(
                (completion.prompt_tokens - completion.cached_prompt_tokens, completion.completion_tokens)
            )
        return completions

    async def end_session(self, session_id: str) -> None:
        await self.inner.end_session(session_id)

    async def aclose(self) -> None:
        await self.inner.aclose()


class NeverAgreeMMLUPro(MMLUProTask):
    """MMLU-Pro whose agents never agree, so every conversation runs all its turns (beliefs are still graded)."""

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        return False


@dataclass(frozen=True)
class ConversationSpec:
    """A batch of coral conversations: which questions, how long, how many at once.

    Args:
        conversations: how many (bundled questions in file order, each sampled again when there are fewer).
        turns: generated turns per conversation (``max_turns``).
        sampling: the agents' sampling; ``ignore_eos`` with ``max_tokens`` fixes every turn's length.
        concurrency: conversations in flight at once.
        extraction: belief extraction mode (``rules`` keeps the judge's requests out of the count).
        data: the task's file the questions come from.
        instruction: the agents' instruction style.
    """

    conversations: int
    turns: int
    sampling: SamplingParams
    concurrency: int
    extraction: str = "rules"
    data: Path = MMLU_PRO
    instruction: str = "assistant_sbs_short"


@dataclass(frozen=True)
class ConversationRun:
    """The records of a run, its wall time and the CPU time of this process (all threads) meanwhile."""

    records: list[ConversationRecord]
    seconds: float
    cpu_seconds: float

    @property
    def generated_turns(self) -> int:
        return sum(1 for record in self.records for turn in record.turns if turn.generated)


def questions(task: Task, data: Path, count: int) -> list[tuple[Example, int]]:
    """``count`` (example, sample) keys: the file's questions in order, sampled again when there are fewer."""
    examples = list(task.load(data))
    if not examples:
        raise ValueError(f"{data}: no examples")
    return [(examples[i % len(examples)], i // len(examples)) for i in range(count)]


def conversation_runner(
    backend: ChatBackend, model: str, task: Task, spec: ConversationSpec, seed: int, folder: Path
) -> tuple[ConversationRunner, list[tuple[Example, int]]]:
    """A runner for ``spec`` storing into ``folder``, and its work. The judge (judge modes) is the agents' model."""
    instruction = task.instruction(spec.instruction)
    agents = {name: Agent(name, backend, model, instruction, spec.sampling) for name in ("teacher", "student")}
    runner = ConversationRunner(
        protocol=CoralProtocol(),
        task=task,
        agents=agents,
        extractor=BeliefExtractor(spec.extraction, backend if spec.extraction != "rules" else None, model),
        store=ResultStore(folder),
        settings=RunSettings(
            run_seed=seed, config_hash="benchmark", max_turns=spec.turns, concurrency=spec.concurrency
        ),
    )
    return runner, questions(task, spec.data, spec.conversations)


def run_conversations(
    backend: ChatBackend, model: str, task: Task, spec: ConversationSpec, seed: int
) -> ConversationRun:
    """Run ``spec`` through ConversationRunner into a temporary results store; times ``runner.run`` only."""
    with tempfile.TemporaryDirectory(prefix="coral-bench-") as folder:
        runner, work = conversation_runner(backend, model, task, spec, seed, Path(folder))
        cpu = time.process_time()
        with stopwatch() as elapsed:
            written = asyncio.run(runner.run(work))
        cpu = time.process_time() - cpu
        records = read_records(folder)
    if written != spec.conversations:
        raise RuntimeError(f"{written} of {spec.conversations} conversations were stored")
    return ConversationRun(records, elapsed(), cpu)
