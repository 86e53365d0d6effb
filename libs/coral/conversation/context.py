"""What a protocol can do inside one conversation: generate a turn, annotate it, check agreement, build the record.

Protocols decide who speaks, what each agent sees and when to stop; everything else (seeds, retries, belief
extraction, grading, belief classes, the record) is done here the same way for every protocol, so a new
protocol (N-agent debate, generator -> verifier -> refiner) needs no change to extraction, the store or metrics.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from coral.backends.base import ChatRequest, Completion, Message
from coral.backends.retry import Tries, call_with_retries, describe
from coral.beliefs import BeliefExtractor
from coral.conversation.agent import Agent
from coral.conversation.settings import RunSettings
from coral.conversation.tree import continue_with, strategy
from coral.records import ConversationRecord, Outcome, StopReason, Turn, Usage
from coral.seeding import SeedPrefix
from coral.tasks.base import Example, Task

if TYPE_CHECKING:
    from coral.conversation.protocols.base import Protocol


@dataclass
class ConversationContext:
    """Everything one conversation needs; created by the runner for each (example, sample).

    Args:
        task: the task the example belongs to.
        example: the example discussed.
        sample_index: which of the example's independent conversations this is.
        agents: speaker name -> agent.
        extractor: belief extraction for every turn.
        settings: the run's settings, the same object for every conversation of the run.
    """

    task: Task
    example: Example
    sample_index: int
    agents: dict[str, Agent]
    extractor: BeliefExtractor
    settings: RunSettings
    _classes: list[str] = field(default_factory=list)

    @cached_property
    def session_id(self) -> str:
        """Names the conversation for engines that keep per-conversation state (prefix cache, replica)."""
        return f"{self.settings.run_seed}:{self.example.id}:{self.sample_index}"

    @cached_property
    def _seeds(self) -> SeedPrefix:
        return SeedPrefix(self.settings.run_seed, self.example.id, self.sample_index)

    def seed(self, *coordinates: object) -> int:
        """``derive_seed(run_seed, example id, sample index, *coordinates)``."""
        return self._seeds.derive(*coordinates)

    async def next_turn(self, speaker: str, messages: list[Message], index: int) -> Turn:
        """Turn ``index``, annotated: one generation, or in tree mode the picked one of ``beam_size`` candidates."""
        if self.settings.beam_size == 1:
            return await self.annotate(await self.generate(speaker, messages, index))
        candidates = await self._candidates(speaker, messages, index)
        await self.annotate_all(candidates)
        return continue_with(candidates, strategy(self.settings.expansion), random.Random(self.seed("pick", index)))

    async def generate(self, speaker: str, messages: list[Message], index: int, branch: int = 0) -> Turn:
        """Ask ``speaker`` for turn ``index``; a request that still fails after retries yields an errored turn."""
        return (await self._ask(speaker, messages, index, self.seed("turn", index, branch), 1))[0]

    async def generate_siblings(self, speaker: str, messages: list[Message], indices: list[int]) -> list[Turn]:
        """Turns ``indices``, answers to the same messages, from one request for ``len(indices)`` completions.

        One prefill serves them all (an engine reads the shared prompt once); completion i gets the seed
        ``seed("turn", indices[0], 0) + i``, so a single index is exactly ``generate``.
        """
        turns = await self._ask(speaker, messages, indices[0], self.seed("turn", indices[0], 0), len(indices))
        for turn, index in zip(turns, indices, strict=True):
            turn.index = index
        return turns

    async def _candidates(self, speaker: str, messages: list[Message], index: int) -> list[Turn]:
        """``beam_size`` candidates from one request with ``n`` (seeds s, s+1, ...) or from one request each."""
        beam_size = self.settings.beam_size
        if self.settings.single_request_expansion:
            return await self._ask(speaker, messages, index, self.seed("turn", index, 0), beam_size)
        branches = [self.generate(speaker, messages, index, branch) for branch in range(beam_size)]
        return list(await asyncio.gather(*branches))

    async def _ask(self, speaker: str, messages: list[Message], index: int, seed: int, n: int) -> list[Turn]:
        """Turns from one request for ``n`` candidates.

        Every request sent and why each failed one failed (a network backend's own retries included) are recorded
        on them.
        """
        agent = self.agents[speaker]
        request = ChatRequest(messages, agent.sampling.with_seed(seed), agent.model, n, self.session_id)
        tries = Tries()
        try:
            completions = await call_with_retries(lambda: agent.backend.chat(request), self.settings.retry, seed, tries)
        except Exception as exc:  # errors are data: recorded on the turn
            return [
                Turn(index=index, speaker=speaker, text="", model=agent.model, seed=seed + i, error=describe(exc),
                     attempts=tries.attempts, failures=list(tries.failures))
                for i in range(n)
            ]
        return [turn_from(c, index, speaker, agent.model, seed + i, tries) for i, c in enumerate(completions)]

    async def annotate(self, turn: Turn) -> Turn:
        """Extract the turn's belief, grade it and give it a belief class (in place; returns the turn)."""
        await self.annotate_all([turn])
        return turn

    async def annotate_all(self, turns: list[Turn]) -> None:
        """``annotate`` turns generated together: extracted and graded at once, classes numbered in list order.

        The order is the list's, not the order the judge calls finish in, so reruns number classes the same.
        """
        await asyncio.gather(*(self._extract_and_grade(turn) for turn in turns))
        for turn in turns:
            if turn.belief is not None:
                turn.belief_class = await self._belief_class(turn.belief)

    async def _extract_and_grade(self, turn: Turn) -> None:
        if turn.error is not None or not turn.carries_answer:  # a critique is not an answer: no judge, no grade
            return
        found = self.extractor.by_rules(self.task, self.example, turn.text)
        if found is None:  # the judge's seed is derived only when the judge is asked
            seed = self.seed("judge", turn.index, turn.seed)
            found = await self.extractor.ask_judge(self.task, self.example, turn.text, seed, self.session_id)
        turn.belief, turn.belief_method, turn.extraction_error = found.belief, found.method, found.error
        turn.judge_reply = found.reply
        turn.extraction_usage = Usage(found.prompt_tokens, found.completion_tokens)
        turn.correct = False
        if turn.belief is not None:
            turn.correct = await self.task.grade(turn.belief, self.example)

    async def _belief_class(self, belief: str) -> int:
        """Number distinct beliefs of this conversation under the task's agreement relation."""
        for number, known in enumerate(self._classes):
            if belief == known or await self.task.agree(belief, known, self.example):
                return number
        self._classes.append(belief)
        return len(self._classes) - 1

    async def agree(self, a: Turn | None, b: Turn | None) -> bool:
        """Both turns hold a valid belief and the task says the beliefs are the same answer."""
        if a is None or b is None or a.belief is None or b.belief is None:
            return False
        return await self.task.agree(a.belief, b.belief, self.example)

    def record(
        self, protocol: Protocol, turns: list[Turn], stop_reason: StopReason, outcome: Outcome | None = None
    ) -> ConversationRecord:
        """The conversation's record: this context's example, agents and settings with the protocol's turns."""
        return ConversationRecord(
            example_id=self.example.id,
            sample_index=self.sample_index,
            task=self.task.name,
            run_seed=self.settings.run_seed,
            config_hash=self.settings.config_hash,
            protocol=protocol.name,
            agents={name: agent.model for name, agent in self.agents.items()},
            system_prompts={name: agent.system_prompt for name, agent in self.agents.items()},
            turns=turns,
            stop_reason=stop_reason,
            max_turns=protocol.max_turns or self.settings.max_turns,
            gold=self.example.answer,
            metadata={"groups": groups} if (groups := self.task.groups(self.example)) else {},
            outcome=outcome,
            protocol_args=protocol.arguments(),
        )


def turn_from(completion: Completion, index: int, speaker: str, model: str, seed: int, tries: Tries) -> Turn:
    """The (not yet annotated) turn a completion becomes, after ``tries`` failed before it."""
    return Turn(
        index=index,
        speaker=speaker,
        text=completion.text,
        model=model,
        seed=seed,
        usage=Usage(completion.prompt_tokens, completion.completion_tokens),
        latency_s=round(completion.latency_s, 4),
        finish_reason=completion.finish_reason,
        attempts=tries.attempts + completion.attempts,
        failures=[*tries.failures, *completion.failures],
        replica=completion.replica,
    )
