"""A scripted backend: answers from a function of the messages, for fast tests of protocols and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from coral.backends.base import BACKENDS, ChatRequest, Completion, Message
from coral.sampling import SamplingParams

Script = Callable[[list[Message], SamplingParams], "str | BaseException"]


@BACKENDS.register("scripted")
class ScriptedBackend:
    """Replies with ``script(messages, sampling)``; a reply that is an exception instance is raised instead.

    Records every request in ``calls`` so tests can assert what each agent saw. Token usage is the word count
    of the prompt and the reply, unless ``usage`` fixes (prompt_tokens, completion_tokens).
    """

    def __init__(self, script: Script, latency_s: float = 0.0, usage: tuple[int, int] | None = None) -> None:
        self.script = script
        self.latency_s = latency_s
        self.usage = usage
        self.calls: list[ChatRequest] = []
        self.ended_sessions: list[str] = []

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """The script's replies, one per choice (choice i gets seed + i); a reply that is an exception is raised."""
        self.calls.append(request)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        messages, sampling = request.messages, request.sampling
        replies = []
        for i in range(request.n):
            reply = self.script(messages, sampling if i == 0 else sampling.with_seed((sampling.seed or 0) + i))
            if isinstance(reply, BaseException):
                raise reply
            if self.usage is not None:
                prompt_tokens, completion_tokens = self.usage
            else:
                prompt_tokens, completion_tokens = sum(len(m["content"].split()) for m in messages), len(reply.split())
            replies.append(Completion(reply, "stop", prompt_tokens, completion_tokens, self.latency_s))
        return replies

    async def end_session(self, session_id: str) -> None:
        """Recorded in ``ended_sessions``, for tests."""
        self.ended_sessions.append(session_id)

    async def aclose(self) -> None:
        """Nothing to release."""

