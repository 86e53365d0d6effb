"""Benchmark 3, client overhead over HTTP: coral's pooled backend vs a client per request.

The server is coral's OpenAI-compatible app (``build_openai_app``) over a ``ScriptedBackend`` that answers after a
fixed ``latency_s``, served by uvicorn (``LocalServer``) in a separate process, so client and server do not share
a GIL. The same requests go to it from:

- coral: one ``OpenAIHTTPBackend`` (one pooled aiohttp session, keep-alive connections);
- naive: the reference's approach, a new ``openai.AsyncOpenAI`` client per request (a new connection, TLS context
  and connection pool each time), closed after the request.

Measured: completed requests per second with ``in_flight`` requests outstanding at all times.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.common import Check, Row, Section, repeat, stat, stopwatch
from coral.backends.base import ChatRequest
from coral.backends.http import OpenAIHTTPBackend
from coral.sampling import SamplingParams

TARGET_GAIN_AT_256 = 1.5
MODEL = "scripted"
MESSAGES = [{"role": "user", "content": "Is 17 a prime number? Answer in one word."}]
SAMPLING = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=8)


@dataclass(frozen=True)
class Sizes:
    """How much work one repeat does.

    Args:
        in_flight: the concurrency levels measured.
        rounds: coral's requests per measurement, in multiples of ``in_flight`` (each slot sends ``rounds``).
        naive_requests: most requests per measurement for the naive client, whose rate is bound by the CPU
            time of making clients and settles within a few dozen requests.
        latency_s: the server's fixed answer time.
    """

    in_flight: tuple[int, ...] = (64, 256)
    rounds: int = 16
    naive_requests: int = 256
    latency_s: float = 0.02


QUICK = Sizes(rounds=4, naive_requests=128)
FULL = Sizes(rounds=16, naive_requests=256)


@dataclass(frozen=True)
class Result:
    in_flight: int
    coral_per_s: float
    naive_per_s: float

    @property
    def gain(self) -> float:
        return self.coral_per_s / self.naive_per_s


# ---------------------------------------------------------------------------------------------- the server
def _serve(latency_s: float, pipe) -> None:
    """Child process: serve the scripted model until terminated; sends the base URL once it listens."""
    from coral.backends import ScriptedBackend
    from coral.serving.local import LocalServer
    from coral.serving.openai_api import build_openai_app

    backend = ScriptedBackend(lambda messages, sampling: "Yes.", latency_s=latency_s, usage=(20, 2))
    server = LocalServer(build_openai_app(backend, [MODEL]), "127.0.0.1", 0)
    server.start()
    pipe.send(server.wait_ready(timeout_s=120))
    threading.Event().wait()  # serve until the parent terminates this process


class ServerProcess:
    """The fixed-latency server in its own process (``with ServerProcess(0.02) as base_url: ...``)."""

    def __init__(self, latency_s: float, start_timeout_s: float = 180.0) -> None:
        self.latency_s = latency_s
        self.start_timeout_s = start_timeout_s
        self._process: multiprocessing.Process | None = None

    def __enter__(self) -> str:
        context = multiprocessing.get_context("spawn")  # never fork a parent that may run threads
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(self.latency_s, send), daemon=True)
        self._process.start()
        if not receive.poll(self.start_timeout_s):
            self.__exit__()
            raise TimeoutError(f"benchmark server did not start within {self.start_timeout_s}s")
        return receive.recv()

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()


# ---------------------------------------------------------------------------------------------- the clients
def coral_client(base_url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    """(request, close): requests through one pooled OpenAIHTTPBackend."""
    backend = OpenAIHTTPBackend(base_url, model=MODEL)
    return (lambda: backend.chat(ChatRequest(MESSAGES, SAMPLING))), backend.aclose


def naive_client(base_url: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    """(request, close): every request makes, uses and closes its own ``openai.AsyncOpenAI`` client."""
    import openai

    async def request() -> object:
        # A generous timeout: creating a client costs tens of milliseconds of CPU, which at 256 in flight delays
        # connecting past the library's 5 s connect timeout; the rate, not a timeout, is what is measured.
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600.0)
        try:
            return await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, temperature=SAMPLING.temperature, max_tokens=SAMPLING.max_tokens
            )
        finally:
            await client.close()

    async def close() -> None:
        pass

    return request, close


async def _drive(request: Callable[[], Awaitable[object]], in_flight: int, total: int) -> float:
    """Requests per second for ``total`` requests, ``in_flight`` of them outstanding at any time."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await request()

    with stopwatch() as elapsed:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return total / elapsed()


def requests_per_s(make_client, base_url: str, in_flight: int, total: int, warm_up: int) -> float:
    """One client's rate at ``in_flight`` after ``warm_up`` requests (the pool's connections, the server)."""

    async def run() -> float:
        request, close = make_client(base_url)
        try:
            await _drive(request, min(in_flight, warm_up), warm_up)
            return await _drive(request, in_flight, total)
        finally:
            await close()

    return asyncio.run(run())


def measure(base_url: str, sizes: Sizes) -> list[Result]:
    """Both clients at every concurrency level, naive first, against the running server.

    coral's client warms up with one request per slot, so its pool holds ``in_flight`` open connections; the
    naive client keeps nothing between requests, so a few requests warm the server for it.
    """
    results = []
    for in_flight in sizes.in_flight:
        total = sizes.rounds * in_flight
        naive = requests_per_s(naive_client, base_url, in_flight, min(total, sizes.naive_requests), warm_up=8)
        pooled = requests_per_s(coral_client, base_url, in_flight, total, warm_up=in_flight)
        results.append(Result(in_flight, coral_per_s=pooled, naive_per_s=naive))
    return results


def benchmark(sizes: Sizes, repeats: int) -> Section:
    """Requests per second of both clients at each concurrency level, and coral's gain."""
    section = Section("http", "3. Client overhead over HTTP (fixed-latency server in another process)")
    with stopwatch() as elapsed, ServerProcess(sizes.latency_s) as base_url:
        runs = repeat(repeats, lambda i: measure(base_url, sizes))
    section.seconds = elapsed()
    for level, in_flight in enumerate(sizes.in_flight):
        results = [run[level] for run in runs]
        gain = stat(results, lambda r: r.gain)
        section.rows += [
            Row(
                f"{in_flight} in flight: coral OpenAIHTTPBackend (pooled)",
                stat(results, lambda r: r.coral_per_s),
                "requests/s",
                0,
            ),
            Row(
                f"{in_flight} in flight: new AsyncOpenAI client per request",
                stat(results, lambda r: r.naive_per_s),
                "requests/s",
                0,
            ),
            Row(f"{in_flight} in flight: coral / naive", gain, "x", 2),
        ]
        if in_flight == 256:
            section.checks.append(
                Check("HTTP requests/s, coral / naive at 256 in flight", gain.median, ">=", TARGET_GAIN_AT_256)
            )
    section.notes += [
        (
            f"Server: coral's OpenAI-compatible app over ScriptedBackend(latency_s={sizes.latency_s}) under uvicorn, "
            f"one process. Per measurement, after a warm-up: coral {sizes.rounds} requests per slot in flight, naive "
            f"the same but at most {sizes.naive_requests}."
        ),
        f"Ideal rate at N in flight is N / {sizes.latency_s} s; the server's own CPU cost caps both clients alike.",
    ]
    return section
