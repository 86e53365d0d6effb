"""A ChatBackend over any OpenAI-compatible HTTP server: vLLM, SGLang, Ray Serve LLM, coral's own server, hosted APIs.

One pooled aiohttp session per backend keeps connections alive across requests (Matrix opened a new client per
request attempt, paying a TCP handshake every turn). Transport failures, overload answers (waiting as long as a
``Retry-After`` header asks) and broken answers (not JSON, no or too few choices) are retried here with the shared
retry loop; once retries are spent the error is reported as not retryable, so the conversation layer does not
multiply them.

Requests that name a ``session_id`` carry it in the ``serve_multiplexed_model_id`` header: Ray Serve routes all
requests with the same id to the same replica (whose prefix cache then holds the conversation), and coral's own
server passes it to its engine as the session.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from coral.backends.base import BACKENDS, BackendError, ChatRequest, Completion, expect_choices, refuse_logprobs
from coral.backends.retry import RetryPolicy, call_with_transport_retries

SESSION_HEADER = "serve_multiplexed_model_id"
"""Ray Serve's multiplexed-model header, used as the conversation id for sticky routing."""

REPLICA_HEADER = "x-coral-replica"
"""Set by coral's servers: the replica that answered."""

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""Statuses that mean "busy or briefly broken": worth another try."""


class HTTPStatusError(BackendError):
    """The server answered with an error status; ``status`` lets a proxy in front of this backend pass it on."""

    def __init__(self, message: str, status: int, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message, retryable, retry_after_s=retry_after_s)
        self.status = status


@BACKENDS.register("openai_http")
class OpenAIHTTPBackend:
    """ChatBackend for an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended.
        model: model name sent when a request names none.
        api_key: bearer token; when absent, read from the environment variable ``api_key_env`` (if set there).
        api_key_env: environment variable holding the key.
        timeout_s: longest a single attempt may take, connecting included.
        max_connections: most connections open at once to the server (more requests wait for a free one).
        retry: how connection errors, timeouts and overload statuses (408, 409, 429, 5xx gateways) are retried.
        headers: extra headers sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 600.0,
        max_connections: int = 256,
        retry: RetryPolicy = RetryPolicy(attempts=5, backoff_s=0.5),
        headers: dict[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIHTTPBackend.base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"OpenAIHTTPBackend.timeout_s must be > 0, got {timeout_s}")
        if max_connections < 1:
            raise ValueError(f"OpenAIHTTPBackend.max_connections must be >= 1, got {max_connections}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.retry = retry
        self._headers = dict(headers or {})
        key = api_key or os.environ.get(api_key_env)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIHTTPBackend({self.url!r}, model={self.model!r})"

    async def _client(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop; a session made in another loop is replaced.

        aiohttp sessions are bound to the loop that created them, and callers such as ``asyncio.run`` per batch
        start a new loop each time. Call ``aclose`` before such a loop ends: aiohttp cannot close the sockets of
        a finished loop, so they stay open until Python collects them.
        """
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed and self._session_loop is loop:
            return self._session
        old = self._session
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self._headers,
        )
        self._session_loop = loop
        if old is not None:
            await _close_quietly(old)
        return self._session

    async def chat(self, request: ChatRequest) -> list[Completion]:
        """One chat request, retried as the policy says.

        ``latency_s`` is the whole call as the caller waited for it, retries included.
        """
        refuse_logprobs(request, self.url)
        name = request.model or self.model
        if name is None:
            raise BackendError(f"{self!r}: no model given (name one in the request or the backend)", retryable=False)
        body = _request_body(name, request)
        headers = {SESSION_HEADER: request.session_id} if request.session_id is not None else None
        started = time.perf_counter()

        async def attempt() -> list[Completion]:
            data, header_replica = await self._post(body, headers)
            return expect_choices(_completions(data, header_replica, self.url), request.n, self.url)

        completions, tries = await call_with_transport_retries(attempt, self.retry, request.sampling.seed, self.url)
        latency_s = time.perf_counter() - started
        return [tries.charge(replace(c, latency_s=latency_s)) for c in completions]

    async def _post(self, body: dict[str, Any], headers: dict[str, str] | None) -> tuple[dict[str, Any], str | None]:
        """One attempt: the parsed JSON answer and the replica header, or a BackendError saying if a retry may help."""
        session = await self._client()
        try:
            async with session.post(self.url, json=body, headers=headers) as response:
                if response.status != 200:
                    detail = _error_text(await response.text())
                    raise HTTPStatusError(
                        f"{self.url}: HTTP {response.status}: {detail}",
                        response.status,
                        response.status in RETRYABLE_STATUS,
                        retry_after_s(response.headers.get("Retry-After")),
                    )
                try:
                    data = await response.json(content_type=None)
                except ValueError as exc:  # a truncated or garbled body: the next try may well be fine
                    raise BackendError(f"{self.url}: answer is not JSON: {exc}", retryable=True) from None
                return data, response.headers.get(REPLICA_HEADER)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise BackendError(f"{self.url}: {kind}", retryable=True) from exc

    async def end_session(self, session_id: str) -> None:
        """Servers keep no per-session state that a client could drop over this API."""

    async def aclose(self) -> None:
        """Close the pooled HTTP session; a later call opens a new one."""
        if self._session is not None:
            session, self._session = self._session, None
            await _close_quietly(session)


def _request_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body; optional fields are left out when unset, since hosted APIs reject fields they do not know."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": request.messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "n": request.n,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        body["ignore_eos"] = True  # a vLLM / coral extension
    return body


def _completions(data: dict[str, Any], header_replica: str | None, url: str) -> list[Completion]:
    """OpenAI chat.completion JSON -> Completions ordered by choice index.

    Usage is reported per request: every completion gets the (shared) prompt's token count. Completion tokens are
    taken per choice when the server says them (coral's server adds ``completion_tokens`` to each choice);
    otherwise the request's total is split evenly, the first choices taking the remainder, so the sum is exact.
    """
    try:
        choices = sorted(data["choices"], key=lambda choice: choice["index"])
        if not choices:
            raise ValueError("no choices")
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        total = int(usage.get("completion_tokens") or 0)
        share, extra = divmod(total, len(choices))
        replica = data.get("replica") or header_replica
        return [
            Completion(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=int(choice.get("completion_tokens", share + (i < extra))),
                latency_s=0.0,  # the caller's whole wait, set once the call is over
                cached_prompt_tokens=cached,
                replica=replica,
            )
            for i, choice in enumerate(choices)
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a broken answer, retried like a 5xx
        problem = f"{url}: malformed chat.completion answer ({type(exc).__name__}: {exc})"
        raise BackendError(problem, retryable=True) from None


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (a number of seconds or an HTTP date).

    None if the header is absent or unreadable.
    """
    if not value:
        return None
    try:
        seconds = float(value)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _error_text(text: str, limit: int = 500) -> str:
    """The server's error message: OpenAI's ``{"error": {"message": ...}}`` when it is that, else the raw text."""
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:limit]
    except (ValueError, AttributeError):
        pass
    return text[:limit]


async def _close_quietly(session: aiohttp.ClientSession) -> None:
    """Close a session; one of a finished loop is only marked closed (its sockets go when collected)."""
    try:
        await session.close()
    except (RuntimeError, ValueError):  # futures of a loop that is not this one
        pass
