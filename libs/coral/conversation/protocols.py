"""Protocols: who speaks next, what each agent sees, and when the conversation stops.

A protocol is a small class with one coroutine, ``run(ctx) -> ConversationRecord``; the context does the
generation, extraction, grading and record keeping. Register a new one with ``@PROTOCOLS.register(name)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from coral.backends.base import Message
from coral.conversation.context import ConversationContext
from coral.records import ConversationRecord, StopReason, Turn
from coral.registry import Registry

PROTOCOLS: Registry[Protocol] = Registry("protocol")


class Protocol(ABC):
    """Who speaks, what each agent sees and when a conversation ends; registered by name in ``PROTOCOLS``."""

    name: ClassVar[str]

    @abstractmethod
    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Run one conversation to its end and return its record (metrics are added by the runner)."""


def agent_view(system_prompt: str, speaker: str, turns: list[Turn]) -> list[Message]:
    """The conversation as ``speaker`` sees it: its own turns as assistant, everyone else's as user."""
    messages: list[Message] = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        messages.append({"role": "assistant" if turn.speaker == speaker else "user", "content": turn.text})
    return messages


def latest_turn_of(turns: list[Turn], speaker: str) -> Turn | None:
    """The speaker's latest generated turn, if any."""
    return next((t for t in reversed(turns) if t.speaker == speaker and t.generated), None)


@PROTOCOLS.register("coral")
class CoralProtocol(Protocol):
    """The Coral two-agent conversation (paper section 3; reference section 3).

    Turn 0 is the asker's templated question. The agents then alternate, the answerer first, for at most
    ``max_turns`` generated turns. After each turn the latest beliefs of both agents are compared; the
    conversation stops when both are valid and the task says they are the same answer.

    Args:
        asker: the speaker who opens the conversation (turn 0); the other agent answers first.
        posed: the asker sets the problem for its partner to solve ("I would like you to try and solve this math
            problem: ...", the reference's teacher-first opening) instead of asking for help with it ("I'm trying
            to solve this math problem: ...").
    """

    name = "coral"

    def __init__(self, asker: str = "student", posed: bool = False) -> None:
        self.asker = asker
        self.posed = posed

    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Alternate the two agents from the opening until they agree, a turn fails or ``max_turns`` is reached."""
        speakers = list(ctx.agents)
        if self.asker not in speakers or len(speakers) != 2:
            raise ValueError(f"the coral protocol needs two agents including {self.asker!r}, got {speakers}")
        answerer = next(s for s in speakers if s != self.asker)
        opening = ctx.task.opening_message(ctx.example, posed=self.posed)
        turns = [Turn(index=0, speaker=self.asker, text=opening, generated=False)]
        stop_reason: StopReason = "max_turns"
        for index in range(1, ctx.settings.max_turns + 1):
            speaker = answerer if turns[-1].speaker == self.asker else self.asker
            view = agent_view(ctx.agents[speaker].system_prompt, speaker, turns)
            turn = await ctx.next_turn(speaker, view, index)
            partner_turn = latest_turn_of(turns, self.asker if speaker == answerer else answerer)
            turns.append(turn)
            if turn.error is not None:
                stop_reason = "error"
                break
            for sibling in turn.siblings:  # recorded for training data (agreeing while wrong), never continued
                sibling.agreement = await ctx.agree(sibling, partner_turn)
            if await ctx.agree(turn, partner_turn):
                turn.agreement = True
                stop_reason = "agreement"
                break
        return ctx.record(self.name, turns, stop_reason)
