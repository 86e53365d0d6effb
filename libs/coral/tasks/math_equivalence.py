"""Mathematical equivalence of two LaTeX answers with math-verify, off the event loop and under a timeout.

math-verify parses with an ANTLR grammar and compares with sympy, which can run for a very long time on a
pathological expression. The reference graded synchronously inside the event loop with no timeout, so one bad
answer stalled every conversation in the process (reference 8.1.9). Here every comparison runs in a worker
process: a call that runs past its timeout or crashes its worker counts as "not equivalent", and the whole pool
is replaced so a stuck worker cannot hold up later calls. Answers longer than ``MAX_ANSWER_CHARS`` are never sent
to a worker: no real answer is that long, and a megabyte of model output would only tie a worker up until the
timeout (and the pool restart after it).

math-verify (and with it sympy) is imported only inside the workers, never in the importing process. Workers
start with ``forkserver`` (``spawn`` where that is missing), so, as with any such pool, a script that grades
must keep its top-level code under ``if __name__ == "__main__":`` (the workers re-import the main module).
Starting the pool and importing math-verify takes about 1-2 s on a 2-core machine; it is paid once, on the
first comparison that needs it, and again after a pool is replaced.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""Never plain ``fork``: the parent runs an event loop and threads, which a forked child must not inherit."""

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")

MAX_ANSWER_CHARS = 1_000
"""Longest answer math-verify is asked about (the bundled MATH test answers have at most 46 characters); a longer
one equals only an identical string."""


def _squash(answer: str) -> str:
    return "".join(answer.split())


def _as_latex(answer: str) -> str:
    r"""Wrap a bare answer (``\frac12``, ``0.5``, ``1/2``) so math-verify reads it as one boxed LaTeX answer."""
    if "\\boxed" in answer:
        return answer
    return "$\\boxed{" + _UNESCAPED_DOLLAR.sub("", answer).strip() + "}$"


def _load_math_verify() -> None:
    """Worker initializer: pay the import of math-verify and sympy once per worker, not inside a timed call."""
    import math_verify  # noqa: F401


def _ping() -> bool:
    return True


def _verify(gold: str, prediction: str) -> bool:
    """Runs in a worker. Unparseable answers are not equivalent to anything."""
    from math_verify import parse, verify

    try:
        parsed_gold = parse(_as_latex(gold)) or parse(gold)
        parsed_prediction = parse(_as_latex(prediction)) or parse(prediction)
        if not parsed_gold or not parsed_prediction:
            return False
        return bool(verify(parsed_gold, parsed_prediction))
    except Exception:
        return False


class MathEquivalence:
    """Asynchronous ``equal(a, b)`` backed by a lazily started pool of math-verify worker processes.

    Args:
        timeout_s: longest one comparison may run; past it the answers count as not equivalent.
        workers: worker processes, and so the number of comparisons that run at once.
        start_timeout_s: longest the pool may take to start and import math-verify (about 2 s on a quiet
            2-core machine), kept out of the per-call timeout so a cold start is not mistaken for a stuck call.

    Use from one event loop at a time. ``close()`` stops the workers; the next call starts a new pool.
    """

    def __init__(self, timeout_s: float = 5.0, workers: int = 2, start_timeout_s: float = 120.0) -> None:
        if timeout_s <= 0 or start_timeout_s <= 0:
            raise ValueError("MathEquivalence timeouts must be > 0")
        if workers < 1:
            raise ValueError(f"MathEquivalence.workers must be >= 1, got {workers}")
        self.timeout_s = timeout_s
        self.workers = workers
        self.start_timeout_s = start_timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._warm_up: list[Future[bool]] = []
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._slots_semaphore: asyncio.Semaphore | None = None

    async def equal(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are the same mathematical answer (argument order: gold first, if any)."""
        if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
            return a == b
        if _squash(a) == _squash(b):
            return True
        loop = asyncio.get_running_loop()
        # Waiting for a free worker happens here, outside the timeout, so a busy pool is not a stuck one.
        async with self._slots():
            for _ in range(2):  # a second try when the pool broke, possibly because another call replaced it
                pool = await self._ready_pool()
                try:
                    return await asyncio.wait_for(loop.run_in_executor(pool, _verify, a, b), self.timeout_s)
                except TimeoutError:
                    self._discard(pool)
                    return False
                except BrokenProcessPool:
                    self._discard(pool)
            return False

    def close(self) -> None:
        """Stop the workers now (a stuck one included)."""
        if self._pool is not None:
            self._discard(self._pool)

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots_semaphore is None or self._slots_loop is not loop:
            self._slots_loop, self._slots_semaphore = loop, asyncio.Semaphore(self.workers)
        return self._slots_semaphore

    async def _ready_pool(self) -> ProcessPoolExecutor:
        """The current pool, started with math-verify imported, before any timed call is sent to it."""
        if self._pool is None:
            context = multiprocessing.get_context(_START_METHOD)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_load_math_verify)
            # One submission per worker makes every worker start now (workers otherwise start on demand).
            self._warm_up = [self._pool.submit(_ping) for _ in range(self.workers)]
        pool, warm_up = self._pool, self._warm_up
        waits = [asyncio.shield(asyncio.wrap_future(future)) for future in warm_up]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.start_timeout_s)
        except (TimeoutError, BrokenProcessPool) as exc:
            self._discard(pool)
            raise RuntimeError(f"the math-verify worker pool failed to start: {exc!r}") from exc
        return pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Kill a pool's workers and forget it; its pending calls fail with BrokenProcessPool."""
        if pool is self._pool:
            self._pool, self._warm_up = None, []
        # ProcessPoolExecutor cannot kill a busy worker through its public API; terminate the processes directly.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=False)
