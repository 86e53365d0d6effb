"""One retry loop for every caller of a model: exponential backoff with seeded jitter, retryable failures only.

Transport backends (HTTP, gRPC) retry what the network broke; the conversation layer retries what a backend
still reports as retryable. Both use this loop, so backoff and jitter mean the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from coral.backends.base import BackendError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried: exponential backoff with seeded jitter.

    Args:
        attempts: total tries (1 = no retry).
        backoff_s: the first wait; doubles each retry, plus up to 50% jitter.
        max_backoff_s: the longest single wait.
    """

    attempts: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * (1 + rng.random() / 2)


def is_retryable(exc: BaseException) -> bool:
    """BackendErrors say whether a retry may help; anything else (a timeout, a dropped connection) might."""
    return exc.retryable if isinstance(exc, BackendError) else True


async def call_with_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, seed: int | None = None
) -> tuple[T, int]:
    """Await ``call()`` until it succeeds or fails for good; returns (result, attempts used).

    The last exception is raised unchanged once attempts run out or the failure is not retryable.
    """
    rng: random.Random | None = None  # made on the first failure: most calls succeed at once
    for attempt in range(1, policy.attempts + 1):
        try:
            return await call(), attempt
        except Exception as exc:
            if attempt == policy.attempts or not is_retryable(exc):
                raise
            rng = rng or random.Random(seed)
            await asyncio.sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")


async def call_with_transport_retries(
    call: Callable[[], Awaitable[T]], policy: RetryPolicy, seed: int | None, target: str
) -> tuple[T, int]:
    """``call_with_retries`` for a network backend: once its retries are spent, the failure is final.

    The error then says so and is not retryable, so a caller with its own retry loop (the conversation layer)
    does not multiply the attempts.
    """
    try:
        return await call_with_retries(call, policy, seed)
    except BackendError as exc:
        if not exc.retryable:
            raise
        raise BackendError(f"{target}: gave up after {policy.attempts} attempts: {exc}", retryable=False) from exc
