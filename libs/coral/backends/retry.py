"""One retry loop for every caller of a model: exponential backoff with seeded jitter, retryable failures only.

Transport backends (HTTP, gRPC) retry what the network broke; the conversation layer (agents' turns) and the
belief extractor (the judge) retry what a backend still reports as retryable. All of them use this loop and
``RetryPolicy``, so backoff and jitter mean the same thing everywhere, and all count what retrying cost
(``Tries``): every request sent and why each failed one failed, which a Completion carries and a turn records.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from coral.backends.base import BackendError, Completion

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried: exponential backoff with seeded jitter.

    Args:
        attempts: total tries (1 = no retry).
        backoff_s: the first wait; doubles each retry, plus up to 50% jitter.
        max_backoff_s: the longest single wait, also when a server asks for a longer one (``Retry-After``).
    """

    attempts: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based); at least what the server asked for."""
        backoff = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * (1 + rng.random() / 2)
        if retry_after_s is None:
            return backoff
        return max(backoff, min(retry_after_s, self.max_backoff_s))


def is_retryable(exc: BaseException) -> bool:
    """BackendErrors say whether a retry may help; anything else (a timeout, a dropped connection) might."""
    return exc.retryable if isinstance(exc, BackendError) else True


def describe(exc: BaseException) -> str:
    """A failure as a turn records it: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Tries:
    """What retrying one call cost so far: requests sent that failed, and why each did (oldest first)."""

    attempts: int = 0
    failures: list[str] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        """Count a failed try.

        A BackendError that stands for several requests (a transport that gave up) counts as all of them, with
        their reasons.
        """
        if isinstance(exc, BackendError):
            self.attempts += exc.attempts
            self.failures.extend(exc.failures or (describe(exc),))
        else:
            self.attempts += 1
            self.failures.append(describe(exc))

    def charge(self, completion: Completion) -> Completion:
        """``completion`` with these failed tries added before its own: all requests it cost, and why each failed."""
        return replace(
            completion,
            attempts=self.attempts + completion.attempts,
            failures=(*self.failures, *completion.failures),
        )


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, seed: int | None = None, tries: Tries | None = None
) -> T:
    """Await ``call()`` until it succeeds or fails for good; each failed try is counted in ``tries``.

    The last exception is raised unchanged once attempts run out or the failure is not retryable. A wait is
    the policy's backoff, or longer when the failure carries the server's ``retry_after_s``.
    """
    tries = tries if tries is not None else Tries()
    rng: random.Random | None = None  # made on the first failure: most calls succeed at once
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call()
        except Exception as exc:
            tries.failed(exc)
            if attempt == policy.attempts or not is_retryable(exc):
                raise
            rng = rng or random.Random(seed)
            retry_after = exc.retry_after_s if isinstance(exc, BackendError) else None
            await asyncio.sleep(policy.delay(attempt, rng, retry_after))
    raise AssertionError("unreachable")


async def call_with_transport_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, seed: int | None, target: str
) -> tuple[T, Tries]:
    """``call_with_retries`` for a network backend, where one try is one request.

    Returns the result and the tries that failed before it (``Tries.charge`` puts them on the Completions).

    Once retries are spent the failure is final: the error says so and is not retryable, so a caller with its
    own retry loop (the conversation layer, the judge) does not multiply the attempts. Either way the raised
    BackendError carries every request's count and reason.
    """
    tries = Tries()
    try:
        return await call_with_retries(call, policy, seed, tries), tries
    except BackendError as exc:
        if exc.retryable:
            message = f"{target}: gave up after {tries.attempts} attempts: {exc}"
            failures = tuple(tries.failures)
            raise BackendError(message, retryable=False, attempts=tries.attempts, failures=failures) from exc
        exc.attempts, exc.failures = tries.attempts, tuple(tries.failures)  # keeps its type (an HTTP status)
        raise
