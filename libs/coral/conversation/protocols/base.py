"""What every protocol is: a configurable class that runs one conversation and returns its record.

A protocol decides who speaks, what each agent sees, which turns carry an answer and what the conversation's
outcome is; the context (``coral.conversation.context``) does the generation, extraction, grading and record
keeping the same way for every protocol. A protocol knows roles and turns, never a task's name: the problem's
wording and answer format come from the task.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from coral.backends.base import Message
from coral.records import ConversationRecord, Turn
from coral.registry import Registry

if TYPE_CHECKING:
    from coral.conversation.context import ConversationContext
    from coral.tasks.base import Task

PROTOCOLS: Registry[Protocol] = Registry("protocol")

MODERATOR = "moderator"
"""The speaker of a protocol's own messages (the problem as turn 0 of a debate or generate-verify-refine record,
the debate's revise requests): the protocol's voice, not an agent."""


class Protocol(ABC):
    """Who speaks, what each agent sees and when a conversation ends; registered by name in ``PROTOCOLS``.

    A subclass keeps each constructor argument as an attribute of the same name, so ``arguments()`` can record
    them on every record and in the config hash; its docstring's Args are the options users see in the CLI
    (``--model.protocol.init_args.<name>``).
    """

    name: ClassVar[str]

    @abstractmethod
    def speakers(self) -> list[str]:
        """The agents this protocol runs, by name; the run builds one agent for each."""

    def instruction(self, speaker: str, task: Task) -> str | None:
        """The system prompt the protocol gives ``speaker`` by default; None: the run's configured instruction.

        An agent's own ``system_prompt`` or ``instruction`` in the config always wins.
        """
        return None

    @property
    def max_turns(self) -> int | None:
        """The most generated turns one conversation can have, when the protocol fixes it (None: the run's)."""
        return None

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments as configured: recorded on each record and hashed into the config."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments().items())
        return f"{type(self).__name__}({args})"

    @abstractmethod
    async def run(self, ctx: ConversationContext) -> ConversationRecord:
        """Run one conversation to its end and return its record (metrics are added by the runner)."""


def agent_view(system_prompt: str, speaker: str, turns: list[Turn]) -> list[Message]:
    """The conversation as ``speaker`` sees it: its own turns as assistant, everyone else's as user.

    An empty system prompt sends no system message.
    """
    messages: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for turn in turns:
        messages.append({"role": "assistant" if turn.speaker == speaker else "user", "content": turn.text})
    return messages


def latest_turn_of(turns: list[Turn], speaker: str) -> Turn | None:
    """The speaker's latest generated turn, if any."""
    return next((t for t in reversed(turns) if t.speaker == speaker and t.generated), None)
