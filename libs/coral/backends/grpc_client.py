"""A ChatBackend over coral's gRPC protocol: a standalone ``coral.serving.grpc_server`` or Ray Serve's gRPC proxy.

The wire format and its conversions are ``coral.wire``, shared with the servers, so this client imports nothing
from ``coral.serving``.

One channel per backend carries every request (Matrix opened a new channel per request attempt). Requests name
their conversation twice: ``session_id`` in the request (the engine's prefix cache) and ``multiplexed_model_id``
metadata (Ray Serve routes all turns of a conversation to one replica with it). ``application`` metadata picks
the Serve application behind a shared proxy. UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED (waiting as
long as the server's ``grpc-retry-pushback-ms`` asks) and broken answers (undecodable, too few choices) are retried
with the shared retry loop; once retries are spent, or for any other status, the error is reported as not
retryable, so the conversation layer does not multiply the retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from coral.backends.base import BACKENDS, BackendError, ChatRequest, Completion, Delta, expect_choices, refuse_logprobs
from coral.backends.retry import RetryPolicy, Tries, call_with_transport_retries
from coral.wire import coral_chat_pb2_grpc as pb_grpc
from coral.wire.codec import CHANNEL_OPTIONS, SESSION_METADATA, from_chunk, from_response, to_request

RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
"""Statuses that mean "unreachable, too slow or busy right now": worth another try."""
PUSHBACK_METADATA = "grpc-retry-pushback-ms"
"""Trailing metadata in which a server asks for a pause before the next try (gRPC's retry design, A6)."""

T = TypeVar("T")


@BACKENDS.register("grpc")
class GrpcBackend:
    """ChatBackend for a CoralChat gRPC endpoint (plaintext; put TLS in front for untrusted networks).

    Args:
        target: ``host:port`` of the server or of a Ray Serve gRPC proxy.
        app_name: Ray Serve application to call (sent as ``application`` metadata); None for a standalone server.
        model: model name sent when a request names none (empty: the server's default).
        token: bearer token, sent as ``authorization`` metadata.
        timeout_s: deadline of a single attempt.
        retry: how UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED answers are retried.
    """

    def __init__(
        self,
        target: str,
        *,
        app_name: str | None = None,
        model: str | None = None,
        token: str | None = None,
        timeout_s: float = 600.0,
        retry: RetryPolicy = RetryPolicy(attempts=5, backoff_s=0.5),
    ) -> None:
        if not target or "://" in target:
            raise ValueError(f"GrpcBackend.target must be host:port, got {target!r}")
        if timeout_s <= 0:
            raise ValueError(f"GrpcBackend.timeout_s must be > 0, got {timeout_s}")
        self.target = target
        self.app_name = app_name
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry
        self._token = token
        self._channel: grpc.aio.Channel | None = None
        self._channel_loop: asyncio.AbstractEventLoop | None = None
        self._stub: pb_grpc.CoralChatStub | None = None

    def __repr__(self) -> str:  # never show the token
        return f"GrpcBackend({self.target!r}, app_name={self.app_name!r}, model={self.model!r})"

    async def _client(self) -> pb_grpc.CoralChatStub:
        """The stub on this event loop's channel; a channel made in another (finished) loop is replaced.

        grpc.aio channels belong to the loop that created them, and callers such as ``asyncio.run`` per batch
        start a new loop each time.
        """
        loop = asyncio.get_running_loop()
        if self._stub is None or self._channel_loop is not loop:
            old = self._channel
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._channel_loop = loop
            self._stub = pb_grpc.CoralChatStub(self._channel)
            if old is not None:
                await _close_quietly(old)
        return self._stub

    def _metadata(self, session_id: str | None) -> list[tuple[str, str]]:
        metadata = []
        if self.app_name:
            metadata.append(("application", self.app_name))
        if session_id:
            metadata.append((SESSION_METADATA, session_id))
        if self._token:
            metadata.append(("authorization", f"Bearer {self._token}"))
        return metadata

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """One Chat call, retried as the policy says; ``latency_s`` is the whole call as the caller waited for it."""
        refuse_logprobs(request, self.target)
        message = to_request(replace(request, model=request.model or self.model))
        metadata = self._metadata(request.session_id)
        started = time.perf_counter()

        async def attempt() -> list[Completion]:
            stub = await self._client()
            response = await _call(lambda: stub.Chat(message, timeout=self.timeout_s, metadata=metadata), self.target)
            return expect_choices(from_response(response), request.n, self.target)

        completions, tries = await self._with_retries(attempt, request.sampling.seed)
        latency_s = time.perf_counter() - started
        return [tries.charge(replace(c, latency_s=latency_s)) for c in completions]

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        """Text pieces as the server generates them (ChatStream).

        Only opening the stream is retried: once a piece has been yielded, a failure is final. Each choice's
        Completion counts the failed openings.
        """
        refuse_logprobs(request, self.target)
        message = to_request(replace(request, model=request.model or self.model))
        metadata = self._metadata(request.session_id)
        started = time.perf_counter()

        async def open_stream() -> tuple[grpc.aio.UnaryStreamCall, Any]:  # (call, first chunk or EOF)
            stub = await self._client()
            call = stub.ChatStream(message, timeout=self.timeout_s, metadata=metadata)
            return call, await _call(call.read, self.target)

        (call, chunk), tries = await self._with_retries(open_stream, request.sampling.seed)
        try:
            while chunk is not grpc.aio.EOF:
                delta = from_chunk(chunk, time.perf_counter() - started)
                if delta.completion is not None:
                    delta = replace(delta, completion=tries.charge(delta.completion))
                yield delta
                chunk = await _call(call.read, self.target, retryable=False)
        finally:
            call.cancel()

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], seed: int | None) -> tuple[T, Tries]:
        return await call_with_transport_retries(attempt, self.retry, seed, self.target)

    async def end_session(self, session_id: str) -> None:
        """The protocol has no call to drop a session; servers evict idle sessions themselves."""

    async def aclose(self) -> None:
        """Close the channel; a later call opens a new one."""
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await _close_quietly(channel)


async def _call(rpc: Callable[[], Awaitable[T]], target: str, retryable: bool = True) -> T:
    """Await one RPC (or one message of a stream); a failed status or an undecodable answer is a BackendError.

    The error names the status code, is retryable for RETRYABLE_CODES and carries the server's pushback.
    """
    try:
        answer = await rpc()
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        message = f"{target}: {code.name}: {exc.details()}"
        retry_after = _pushback_s(exc.trailing_metadata())
        retryable = retryable and code in RETRYABLE_CODES
        raise BackendError(message, retryable=retryable, retry_after_s=retry_after) from None
    if answer is None:  # grpc logs a message it cannot decode and hands over None
        raise BackendError(f"{target}: the answer could not be decoded", retryable=retryable)
    return answer


def _pushback_s(metadata: Any) -> float | None:
    """Seconds the server's ``grpc-retry-pushback-ms`` asks to wait; None when absent or not a whole number >= 0."""
    value = dict(metadata or ()).get(PUSHBACK_METADATA)
    if not isinstance(value, str) or not value.isdigit():
        return None
    return int(value) / 1000


async def _close_quietly(channel: grpc.aio.Channel) -> None:
    """Close a channel, also one whose event loop has finished (its connections then die with that loop)."""
    try:
        await channel.close()
    except (RuntimeError, ValueError):
        pass
