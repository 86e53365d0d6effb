"""A scripted backend: answers from a function of the messages, for fast tests of protocols and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coral.backends.base import BACKENDS, BackendError, Completion, Message
from coral.sampling import SamplingParams

Script = Callable[[list[Message], SamplingParams], str]


@BACKENDS.register("scripted")
class ScriptedBackend:
    """Replies with ``script(messages, sampling)``; a reply that is an exception instance is raised instead.

    Records every request in ``calls`` so tests can assert what each agent saw.
    """

    def __init__(self, script: Script, latency_s: float = 0.0) -> None:
        self.script = script
        self.latency_s = latency_s
        self.calls: list[tuple[list[Message], SamplingParams, str | None]] = []
        self.ended_sessions: list[str] = []

    async def chat(
        self,
        messages: list[Message],
        sampling: SamplingParams,
        *,
        model: str | None = None,
        n: int = 1,
        session_id: str | None = None,
    ) -> list[Completion]:
        self.calls.append((messages, sampling, session_id))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        replies = []
        for i in range(n):
            reply = self.script(messages, sampling if i == 0 else sampling.with_seed((sampling.seed or 0) + i))
            if isinstance(reply, BaseException):
                raise reply
            replies.append(Completion(reply, "stop", sum(len(m["content"]) for m in messages), len(reply.split()), 0.0))
        return replies

    async def end_session(self, session_id: str) -> None:
        self.ended_sessions.append(session_id)

    async def aclose(self) -> None:
        pass


__all__ = ["BackendError", "ScriptedBackend"]
