"""The interface every model backend implements: chat messages in, completions out."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from coral.registry import Registry
from coral.sampling import SamplingParams

Message = dict[str, str]
"""An OpenAI-style chat message: ``{"role": "system"|"user"|"assistant", "content": ...}``."""


MAX_N = 128
"""Most completions one request may ask for (the HTTP and gRPC servers both refuse more)."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat request: the only place its fields are declared, passed whole from caller to backend to server."""

    messages: list[Message]
    """The conversation so far, oldest first."""
    sampling: SamplingParams
    """How to sample; ``n`` choices use seeds ``seed``, ``seed + 1``, ..."""
    model: str | None = None
    """The model to answer; None: the backend's (or server's) default."""
    n: int = 1
    """Completions to sample for this one prompt."""
    session_id: str | None = None
    """The conversation this request belongs to, so an engine can keep its state (prefix cache, replica) between
    turns."""
    logprobs: bool = False
    """Also return the token ids and each generated token's log-probability (``Completion.token_ids``,
    ``logprobs``, ``prompt_token_ids``), which PPO needs to score the policy's own samples. Only the embedded
    engine has them; the HTTP and gRPC backends refuse such a request (InvalidRequestError, param ``logprobs``)."""


@dataclass(frozen=True)
class Completion:
    """One generated answer with what it cost."""

    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cached_prompt_tokens: int = 0
    """Prompt tokens whose keys and values were reused from an earlier request instead of recomputed."""
    replica: str | None = None
    """Which server replica answered (served backends); lets tests and reports check sticky routing."""
    attempts: int = 1
    """Requests sent until this answer came, a network backend's own retries included."""
    failures: tuple[str, ...] = ()
    """Why each earlier request failed, oldest first (``attempts - 1`` reasons)."""
    prompt_token_ids: tuple[int, ...] | None = None
    """With ``ChatRequest.logprobs``: the prompt as the model read it (chat template applied), so that prompt +
    ``token_ids`` is exactly the sequence the model saw."""
    token_ids: tuple[int, ...] | None = None
    """With ``ChatRequest.logprobs``: every generated token, a final end-of-sequence token included; ``text`` is
    their decoding without it, cut before a stop string when one ended the completion."""
    logprobs: tuple[float, ...] | None = None
    """With ``ChatRequest.logprobs``: for each of ``token_ids``, ``log_softmax(logits / temperature)`` at that
    token: the distribution the sampler drew from, before top-p truncation (temperature 0 counts as 1)."""


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed completion: new text of choice ``index``; the last piece carries the Completion."""

    index: int
    text: str
    completion: Completion | None = None


class BackendError(RuntimeError):
    """A request failed. ``retryable`` says whether trying again may succeed.

    Args:
        message: what went wrong, naming the server.
        retryable: whether trying again may succeed.
        retry_after_s: the server asked to wait this long before trying again (HTTP ``Retry-After``).
        attempts: requests this failure stands for (a network backend that gave up after its own retries).
        failures: why each of those requests failed, oldest first; empty means just ``message``.
    """

    def __init__(
        self,
        message: str,
        retryable: bool = True,
        *,
        retry_after_s: float | None = None,
        attempts: int = 1,
        failures: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.attempts = attempts
        self.failures = failures


def expect_choices(completions: list[Completion], n: int, source: str) -> list[Completion]:
    """The first ``n`` completions; fewer is a retryable BackendError naming ``source``.

    A server that answers 200 with fewer choices than asked for (``choices: []``) is broken for that request, as
    with a 5xx; one that sends more than asked for is only wasteful.
    """
    if len(completions) < n:
        raise BackendError(f"{source}: asked for {n} choice(s), the answer holds {len(completions)}", retryable=True)
    return completions[:n]


def refuse_logprobs(request: ChatRequest, source: str) -> None:
    """A served backend refuses ``logprobs`` rather than answer without the token ids a trainer would then lack."""
    if request.logprobs:
        message = f"{source}: token ids and log-probabilities (logprobs) come only from the embedded engine"
        raise InvalidRequestError(message, param="logprobs")


class InvalidRequestError(BackendError):
    """The request can never succeed as sent (a prompt longer than the model's context, ``max_tokens`` past it).

    Servers answer it with 400 / INVALID_ARGUMENT, so clients do not retry it; ``param`` names the culprit field
    and ``code`` is OpenAI's error code (e.g. ``context_length_exceeded``).
    """

    status = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, retryable=False)
        self.param, self.code = param, code


@runtime_checkable
class ChatBackend(Protocol):
    """Anything that answers chat requests."""

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """The request's ``n`` completions; a failure is a BackendError that says whether a retry may help."""
        ...

    async def end_session(self, session_id: str) -> None:
        """The conversation is over; state kept for it may be dropped."""
        ...

    async def aclose(self) -> None:
        """Release what this object holds (connections, sessions); the backend is not used after this."""
        ...


@runtime_checkable
class StreamingChatBackend(ChatBackend, Protocol):
    """A ChatBackend that also hands out text as it is generated.

    ``chat_stream`` yields Deltas per choice; the last Delta of each choice carries its Completion, and the pieces
    of a choice join to exactly the text ``chat`` would give.
    """

    def chat_stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """The request's pieces as they are generated (an async generator)."""
        ...


async def stream_chat(backend: ChatBackend, request: ChatRequest) -> AsyncGenerator[Delta, None]:
    """Stream a chat request: token pieces from a StreamingChatBackend, else one piece per choice."""
    if isinstance(backend, StreamingChatBackend):
        async for delta in backend.chat_stream(request):
            yield delta
        return
    for index, completion in enumerate(await backend.chat(request)):
        yield Delta(index, completion.text, completion)


BACKENDS: Registry[ChatBackend] = Registry("backend")
