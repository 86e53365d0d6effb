"""Fault injection: coral's own servers in front of a fast deterministic backend, failing on purpose.

For tests and benchmarks only (never part of the library). Per request, with probability ``rate`` (seeded), the
HTTP server (``FaultyHTTP``, an ASGI layer over ``build_openai_app``) or the gRPC server (``FaultyGrpc``, over
``ChatServicer``) injects one fault drawn from its kinds:

- transport faults, which a client must retry: HTTP 5xx, 429 with ``Retry-After``, a hang past the client's
  timeout, a connection closed mid-body, malformed JSON, ``choices: []``; over gRPC UNAVAILABLE,
  RESOURCE_EXHAUSTED with ``grpc-retry-pushback-ms``, a hang past the deadline, an undecodable response and a
  response without choices;
- content faults, valid answers whose text is hostile: absurdly long text, and text built to trip parsers ("The
  correct answer is" followed by 20,000 spaces; 50 KB of nested ``\\boxed{``).

A request's fate depends only on the seed, the request's bytes and how often those bytes were seen before, not
on timing or concurrency, so a campaign is reproducible. Every request is logged (``Injector.log``) with its
conversation (session id), request seed and fault, so a test can check each turn's attempts against what was
injected.

    python -m benchmarks.faults campaign [--conversations N] [--kills N]   # the README's reliability table
    python -m benchmarks.faults serve --rate 0.1 [--port 8000]             # a faulty server to point coral at
    python -m benchmarks.faults client --url URL --out DIR ...             # one evaluation run (the kill test's)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from coral.backends.base import ChatBackend, Message
from coral.backends.grpc_client import PUSHBACK_METADATA, GrpcBackend
from coral.backends.http import SESSION_HEADER, OpenAIHTTPBackend
from coral.backends.retry import RetryPolicy
from coral.backends.scripted import ScriptedBackend
from coral.beliefs import BeliefExtractor
from coral.conversation import PROTOCOLS, Agent, ConversationRunner, RunSettings
from coral.records import ConversationRecord
from coral.sampling import SamplingParams
from coral.serving.grpc_server import ChatServicer
from coral.store import ResultStore, rank_file, read_records, store_files
from coral.tasks.base import Example
from coral.tasks.mmlu_pro import MMLUProTask
from coral.wire import coral_chat_pb2 as pb
from coral.wire.codec import CHANNEL_OPTIONS, SESSION_METADATA, RpcAbort

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "mmlu_pro" / "test.jsonl"
MODEL = "faulty"

CONTENT_FAULTS = ("long_text", "trap_spaces", "trap_boxed")
"""Faults that answer, with hostile text: the turn succeeds and its text goes on into the conversation."""
HTTP_FAULTS = ("5xx", "429", "hang", "disconnect", "malformed", "empty", *CONTENT_FAULTS)
GRPC_FAULTS = ("unavailable", "exhausted", "hang", "malformed", "empty", *CONTENT_FAULTS)
TRAP_SPACES = "The correct answer is" + " " * 20_000
TRAP_BOXED = "\\boxed{" * (50_000 // len("\\boxed{"))


@dataclass(frozen=True)
class FaultPlan:
    """What a faulty server injects.

    Args:
        rate: the share of requests that get a fault.
        kinds: the faults drawn from (uniformly).
        seed: decides which requests fail and how.
        retry_after_s: the wait a 429 (``Retry-After``) or RESOURCE_EXHAUSTED (pushback) asks for.
        hang_s: longest a hang lasts (it ends early when the client gives up); then the request is answered.
        long_text_chars: length of the absurdly long text.
    """

    rate: float = 0.1
    kinds: tuple[str, ...] = HTTP_FAULTS
    seed: int = 0
    retry_after_s: float = 1.0
    hang_s: float = 5.0
    long_text_chars: int = 200_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"FaultPlan.rate must be in [0, 1], got {self.rate}")
        unknown = sorted(set(self.kinds) - set(HTTP_FAULTS) - set(GRPC_FAULTS))
        if unknown or not self.kinds:
            known = ", ".join(dict.fromkeys(HTTP_FAULTS + GRPC_FAULTS))
            raise ValueError(f"FaultPlan.kinds: {unknown or 'none given'}; choose from {known}")


@dataclass(frozen=True)
class Injected:
    """One request a faulty server received: when, for which conversation and request seed, and its fault."""

    at: float
    key: str
    session: str | None
    seed: int | None
    fault: str | None


@dataclass
class Injector:
    """Decides each request's fault and logs every request. ``forced`` faults are used first, in order ("ok": none)."""

    plan: FaultPlan
    forced: collections.deque[str] = field(default_factory=collections.deque)
    log: list[Injected] = field(default_factory=list)
    _seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def decide(self, request: bytes, session: str | None, seed: int | None) -> str | None:
        """The fault for this request (None: answer it normally), logged with the request."""
        key = hashlib.sha256(request).hexdigest()
        repeat = self._seen[key]
        self._seen[key] += 1
        if self.forced:
            fault = self.forced.popleft()
            fault = None if fault == "ok" else fault
        else:
            rng = random.Random(f"{self.plan.seed}:{key}:{repeat}")
            fault = rng.choice(self.plan.kinds) if rng.random() < self.plan.rate else None
        self.log.append(Injected(time.monotonic(), key, session, seed, fault))
        return fault

    def text(self, fault: str) -> str:
        """The hostile text of a content fault."""
        if fault == "long_text":
            return ("lorem ipsum dolor sit amet " * (self.plan.long_text_chars // 27 + 1))[: self.plan.long_text_chars]
        return TRAP_SPACES if fault == "trap_spaces" else TRAP_BOXED


# ---------------------------------------------------------------------------------------------- HTTP
class FaultyHTTP:
    """ASGI layer over an OpenAI-compatible app that injects faults into ``POST /v1/chat/completions``."""

    def __init__(self, app: Any, injector: Injector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        request = _json_or_empty(body)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        fault = self.injector.decide(body, headers.get(SESSION_HEADER), request.get("seed"))
        replay = _replay(body, receive)
        if fault is None:
            return await self.app(scope, replay, send)
        plan = self.injector.plan
        if fault == "5xx":
            return await _answer(send, 503, {"error": {"message": "injected overload", "type": "server_error"}})
        if fault == "429":
            error = {"error": {"message": "injected rate limit", "type": "rate_limit_error"}}
            return await _answer(send, 429, error, {"retry-after": f"{plan.retry_after_s:g}"})
        if fault == "hang":  # until the client gives up (or hang_s passed); then answered, perhaps to no one
            await _until_disconnect(receive, plan.hang_s)
            return await self.app(scope, replay, send)
        if fault == "disconnect":
            return await _cut_after_half(self.app, scope, replay, send)
        if fault == "malformed":
            return await _raw(send, 200, b'{"id": "chatcmpl-injected", "choices": [{"index": 0, "message": {"ro')
        n = int(request.get("n") or 1)
        texts = [] if fault == "empty" else [self.injector.text(fault)] * n
        await _answer(send, 200, _chat_completion(texts, str(request.get("model", MODEL))))


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that gives the already-read body once, then whatever the connection says next."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _json_or_empty(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def _until_disconnect(receive: Callable, longest_s: float) -> None:
    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), longest_s)
    except TimeoutError:
        pass


async def _cut_after_half(app: Any, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
    """Send ``app``'s response head and half its body, then return: the server closes the connection mid-body."""
    messages: list[dict[str, Any]] = []

    async def keep(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, keep)
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    await send(next(m for m in messages if m["type"] == "http.response.start"))
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})


async def _answer(send: Callable, status: int, data: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    await _raw(send, status, json.dumps(data).encode(), headers)


async def _raw(send: Callable, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    pairs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": body})


def _chat_completion(texts: list[str], model: str) -> dict[str, Any]:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "length",
         "completion_tokens": 1}
        for i, text in enumerate(texts)
    ]
    usage = {"prompt_tokens": 1, "completion_tokens": len(texts), "total_tokens": 1 + len(texts)}
    return {"id": "chatcmpl-injected", "object": "chat.completion", "created": 0, "model": model, "choices": choices,
            "usage": usage}


# ---------------------------------------------------------------------------------------------- gRPC
class FaultyGrpc:
    """CoralChat's unary ``Chat`` over a ``ChatServicer``, with faults; ``ChatStream`` is passed through."""

    def __init__(self, servicer: ChatServicer, injector: Injector) -> None:
        self.servicer = servicer
        self.injector = injector

    def handler(self) -> grpc.GenericRpcHandler:
        """Chat answers raw bytes, so an undecodable response can be sent."""
        return grpc.method_handlers_generic_handler("coral.chat.v1.CoralChat", {
            "Chat": grpc.unary_unary_rpc_method_handler(
                self.chat, request_deserializer=pb.ChatRequest.FromString, response_serializer=None),
            "ChatStream": grpc.unary_stream_rpc_method_handler(
                self.servicer.ChatStream, request_deserializer=pb.ChatRequest.FromString,
                response_serializer=pb.ChatChunk.SerializeToString),
        })

    async def chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple(context.invocation_metadata() or ())
        session = request.session_id or dict(metadata).get(SESSION_METADATA)
        seed = request.seed if request.HasField("seed") else None
        fault = self.injector.decide(request.SerializeToString(deterministic=True), session, seed)
        plan = self.injector.plan
        if fault == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected: unavailable")
        if fault == "exhausted":
            pushback = ((PUSHBACK_METADATA, str(round(plan.retry_after_s * 1000))),)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "injected: busy", trailing_metadata=pushback)
        if fault == "hang":  # the client's deadline passes first; then the call is answered (to no one)
            await asyncio.sleep(plan.hang_s)
        if fault == "malformed":
            return b"\xff\xff\xffinjected: not a ChatResponse"
        if fault == "empty":
            return pb.ChatResponse(id="chat-injected", model=request.model).SerializeToString()
        if fault in CONTENT_FAULTS:
            text = self.injector.text(fault)
            choices = [pb.Choice(index=i, text=text, finish_reason="length") for i in range(max(request.n, 1))]
            return pb.ChatResponse(id="chat-injected", model=request.model, choices=choices).SerializeToString()
        try:
            return (await self.servicer.respond(request, metadata)).SerializeToString()
        except RpcAbort as abort:
            await context.abort(abort.code, abort.details)  # raises, ending the call with that status


async def serve_faulty_grpc(
    backend: ChatBackend, injector: Injector, host: str = "127.0.0.1"
) -> tuple[grpc.aio.Server, str]:
    """A faulty CoralChat server for ``backend`` on a free port; returns the server and its ``host:port``."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    port = server.add_insecure_port(f"{host}:0")
    faulty = FaultyGrpc(ChatServicer(backend, replica=f"{host}:{port}"), injector)
    server.add_generic_rpc_handlers((faulty.handler(),))
    await server.start()
    return server, f"{host}:{port}"


def faulty_http_app(backend: ChatBackend, injector: Injector) -> FaultyHTTP:
    """coral's OpenAI-compatible app serving ``backend`` as model ``MODEL``, with faults."""
    from coral.serving.openai_api import build_openai_app

    return FaultyHTTP(build_openai_app(backend, [MODEL]), injector)


# ---------------------------------------------------------------------------------------------- the evaluation
def reply(messages: list[Message], sampling: SamplingParams) -> str:
    """The deterministic agent: a function of the request seed only (a stated letter A-C, or no answer)."""
    pick = (sampling.seed or 0) % 4
    return "I am not sure yet." if pick == 3 else f"Let me think. The correct answer is ({'ABC'[pick]})"


def deterministic_backend(latency_s: float = 0.0) -> ScriptedBackend:
    return ScriptedBackend(reply, latency_s=latency_s)


@dataclass(frozen=True)
class Evaluation:
    """One small evaluation run (MMLU-Pro, the bundled sample, two agents on one backend, rules extraction).

    Args:
        examples: the first N examples of the bundled file.
        samples: conversations per example.
        max_turns: most generated turns per conversation.
        concurrency: conversations in flight at once.
        run_seed: every request seed derives from it.
    """

    examples: int = 12
    samples: int = 2
    max_turns: int = 4
    concurrency: int = 8
    run_seed: int = 0

    def keys(self) -> set[tuple[str, int]]:
        """Every (example id, sample) the run must store exactly once."""
        return {(example.id, s) for example in self._examples() for s in range(self.samples)}

    def _examples(self) -> list[Example]:
        return MMLUProTask().read(DATA)[: self.examples]

    async def run(self, backend: ChatBackend, root: str | Path, retry: RetryPolicy = RetryPolicy(attempts=1)) -> int:
        """Run every (example, sample) not yet in the store at ``root``; returns how many records were written."""
        task = MMLUProTask()
        sampling = SamplingParams(temperature=0.7, max_tokens=64)
        agents = {name: Agent(name, backend, MODEL, f"You are the {name}.", sampling)
                  for name in ("teacher", "student")}
        runner = ConversationRunner(
            protocol=PROTOCOLS.get("coral")(), task=task, agents=agents, extractor=BeliefExtractor("rules"),
            store=ResultStore(root),
            settings=RunSettings(run_seed=self.run_seed, config_hash="faults", max_turns=self.max_turns,
                                 concurrency=self.concurrency, retry=retry),
        )
        try:
            return await runner.run(runner.pending(self._examples(), self.samples))
        finally:
            await backend.aclose()


def lines_per_key(root: str | Path) -> collections.Counter[tuple[str, int]]:
    """How many complete record lines each key has in the store's files (a store reader would drop duplicates)."""
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    for path in store_files(root):
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if line.endswith("\n"):
                record = json.loads(line)
                counts[(record["example_id"], record["sample_index"])] += 1
    return counts


def lost_and_duplicated(root: str | Path, keys: Iterable[tuple[str, int]]) -> tuple[int, int]:
    """(keys missing from the store, extra lines for keys stored more than once)."""
    counts = lines_per_key(root)
    return sum(1 for key in keys if counts[key] == 0), sum(n - 1 for n in counts.values() if n > 1)


# ---------------------------------------------------------------------------------------------- campaigns
@dataclass(frozen=True)
class Client:
    """How the evaluation's client talks to a faulty server: a short timeout, quick retries."""

    timeout_s: float = 0.5
    retry: RetryPolicy = RetryPolicy(attempts=5, backoff_s=0.01, max_backoff_s=2.0)

    def backend(self, protocol: str, address: str) -> ChatBackend:
        if protocol == "http":
            return OpenAIHTTPBackend(address, model=MODEL, timeout_s=self.timeout_s, retry=self.retry)
        return GrpcBackend(address, model=MODEL, timeout_s=self.timeout_s, retry=self.retry)


def run_with_faults(
    protocol: str, injector: Injector, evaluation: Evaluation, root: str | Path, client: Client = Client()
) -> None:
    """Run ``evaluation`` into ``root`` against a faulty ``protocol`` ("http" or "grpc") server of ``injector``."""
    backend = deterministic_backend()
    if protocol == "http":
        # imports torch (for the embedded engine), which client processes need not pay for
        from coral.serving.local import LocalServer

        with LocalServer(faulty_http_app(backend, injector), log_level="critical") as server:
            asyncio.run(evaluation.run(client.backend("http", server.base_url), root, client.retry))
        return

    async def over_grpc() -> None:
        server, target = await serve_faulty_grpc(backend, injector)
        try:
            await evaluation.run(client.backend("grpc", target), root, client.retry)
        finally:
            await server.stop(None)

    asyncio.run(over_grpc())


@dataclass(frozen=True)
class KillReport:
    """What killing the client at random points did: kills that landed mid-run and each restart's recovery time
    (from starting the process to the store growing again)."""

    kills: int
    mid_run: int
    recovery_s: tuple[float, ...]
    final_returncode: int


def kill_and_restart(
    url: str, root: str | Path, evaluation: Evaluation, kills: int, seed: int, client: Client = Client()
) -> KillReport:
    """SIGKILL a client process ``kills`` times at seeded random points, restarting it each time, then let one
    run to the end. A point is "after 0-3 more records reached the store, plus 0-50 ms"."""
    rng = random.Random(seed)
    store = rank_file(root)
    mid_run, recoveries = 0, []
    for _ in range(kills):
        records_before = _complete_lines(store)
        process = _start_client(url, root, evaluation, client)
        started = time.monotonic()
        wanted, pause = records_before + rng.randint(0, 3), rng.uniform(0.0, 0.05)
        grew_at = _wait_for_records(store, records_before, wanted, process)
        if grew_at is not None:
            recoveries.append(grew_at - started)
        time.sleep(pause)
        if process.poll() is None:
            mid_run += 1
        process.kill()
        process.wait()
    final = _start_client(url, root, evaluation, client)
    return KillReport(kills, mid_run, tuple(recoveries), final.wait(timeout=120))


def _start_client(url: str, root: str | Path, evaluation: Evaluation, client: Client) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "benchmarks.faults", "client", "--url", url, "--out", str(root),
        "--examples", str(evaluation.examples), "--samples", str(evaluation.samples),
        "--max-turns", str(evaluation.max_turns), "--concurrency", str(evaluation.concurrency),
        "--run-seed", str(evaluation.run_seed), "--timeout", str(client.timeout_s),
        "--attempts", str(client.retry.attempts), "--backoff", str(client.retry.backoff_s),
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_for_records(
    path: Path, before: int, wanted: int, process: subprocess.Popen, limit_s: float = 60.0
) -> float | None:
    """Wait until ``path`` holds ``wanted`` lines or the process ends; returns when it first grew past ``before``."""
    grew_at, deadline = None, time.monotonic() + limit_s
    while time.monotonic() < deadline:
        count = _complete_lines(path)
        if grew_at is None and count > before:
            grew_at = time.monotonic()
        if count >= wanted or process.poll() is not None:
            return grew_at
        time.sleep(0.005)
    return grew_at


# ---------------------------------------------------------------------------------------------- command line
def _client_main(args: argparse.Namespace) -> None:
    evaluation = Evaluation(args.examples, args.samples, args.max_turns, args.concurrency, args.run_seed)
    client = Client(args.timeout, RetryPolicy(attempts=args.attempts, backoff_s=args.backoff, max_backoff_s=2.0))
    written = asyncio.run(evaluation.run(client.backend("http", args.url), args.out, client.retry))
    print(f"{written} conversations written to {args.out}")


def _serve_main(args: argparse.Namespace) -> None:
    from coral.serving.local import LocalServer

    plan = FaultPlan(rate=args.rate, seed=args.seed)
    server = LocalServer(faulty_http_app(deterministic_backend(), Injector(plan)), port=args.port, log_level="warning")
    print(f"faulty OpenAI-compatible server at {server.base_url} (model {MODEL!r}, {plan})", flush=True)
    server.run()


TRANSPORT_HTTP_FAULTS = tuple(kind for kind in HTTP_FAULTS if kind not in CONTENT_FAULTS)
KILL_EVALUATION = Evaluation(examples=70, samples=2, max_turns=4, concurrency=4)
"""Enough work that 20 kills (each after 0-3 more records) land while the client still has conversations to run."""


def _campaign_main(args: argparse.Namespace) -> None:
    """Measure the README's reliability table and print it as Markdown."""
    evaluation = Evaluation(examples=args.conversations // 2, samples=2)
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(evaluation.run(deterministic_backend(), root))
        baseline = {record.key: record for record in read_records(root)}
    rows = []
    for protocol, kinds in (("http", HTTP_FAULTS), ("grpc", GRPC_FAULTS)):
        for rate in (0.1, 0.3):
            with tempfile.TemporaryDirectory() as root:
                injector = Injector(FaultPlan(rate=rate, kinds=kinds, seed=args.seed), collections.deque(kinds))
                started = time.monotonic()
                run_with_faults(protocol, injector, evaluation, root)
                elapsed = time.monotonic() - started
                rows.append(_fault_row(protocol, rate, injector, evaluation, root, elapsed, baseline))
    with tempfile.TemporaryDirectory() as root:
        from coral.serving.local import LocalServer

        plan = FaultPlan(rate=0.1, kinds=TRANSPORT_HTTP_FAULTS, seed=args.seed, retry_after_s=0.2)
        with LocalServer(faulty_http_app(deterministic_backend(0.005), Injector(plan)), log_level="critical") as server:
            report = kill_and_restart(server.base_url, root, KILL_EVALUATION, args.kills, args.seed)
        lost, duplicated = lost_and_duplicated(root, KILL_EVALUATION.keys())
        rows.append((
            f"SIGKILL of the client at {args.kills} random points ({report.mid_run} mid-run), each followed by a "
            f"restart; {len(KILL_EVALUATION.keys())} conversations, HTTP 10% transport faults",
            lost, duplicated, "-", f"restart to the next stored record: {_spread(report.recovery_s)}",
        ))
    print("| Faults tried | Conversations lost | Duplicates | Completed as without faults | Recovery time |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def completed_cleanly(records: list[ConversationRecord], injector: Injector) -> list[ConversationRecord]:
    """The conversations that ended without an error and never got hostile text: those a fault-free run must
    reproduce exactly."""
    hostile = {entry.session for entry in injector.log if entry.fault in CONTENT_FAULTS}
    return [r for r in records if r.stop_reason != "error" and session_of(r) not in hostile]


def session_of(record: ConversationRecord) -> str:
    """The session id its requests carried (``ConversationContext.session_id``)."""
    return f"{record.run_seed}:{record.example_id}:{record.sample_index}"


def _fault_row(protocol: str, rate: float, injector: Injector, evaluation: Evaluation, root: str, elapsed: float,
               baseline: dict[tuple[str, int], ConversationRecord]) -> tuple:
    counts = collections.Counter(entry.fault for entry in injector.log if entry.fault)
    records = read_records(root)
    lost, duplicated = lost_and_duplicated(root, evaluation.keys())
    clean = completed_cleanly(records, injector)
    same = sum(
        r.metrics == baseline[r.key].metrics and r.turns[-1].text == baseline[r.key].turns[-1].text for r in clean
    )
    errored = sum(r.stop_reason == "error" for r in records)
    retried = tuple(t.latency_s for r in records for t in r.turns if t.attempts > 1 and t.error is None)
    tried = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
    faults = (f"{protocol.upper()} {rate:.0%}: {sum(counts.values())} faults in {len(injector.log)} requests "
              f"({tried}); {len(records)} conversations in {elapsed:.1f} s")
    hostile = len(records) - len(clean) - errored
    outcome = f"{same} of {len(clean)} (others: {errored} ended in error, {hostile} got hostile text)"
    return faults, lost, duplicated, outcome, f"a retried turn, first request to answer: {_spread(retried)}"


def _spread(values: tuple[float, ...]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    client = commands.add_parser("client", help="one evaluation run against a (faulty) OpenAI-compatible server")
    client.add_argument("--url", required=True)
    client.add_argument("--out", required=True)
    for name, default in (("--examples", 12), ("--samples", 2), ("--max-turns", 4), ("--concurrency", 8),
                          ("--run-seed", 0), ("--attempts", 5)):
        client.add_argument(name, type=int, default=default)
    client.add_argument("--timeout", type=float, default=0.5)
    client.add_argument("--backoff", type=float, default=0.01)
    serve = commands.add_parser("serve", help="serve the faulty OpenAI-compatible API until interrupted")
    serve.add_argument("--rate", type=float, default=0.1)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--port", type=int, default=8000)
    campaign = commands.add_parser("campaign", help="measure the reliability table")
    campaign.add_argument("--conversations", type=int, default=100)
    campaign.add_argument("--kills", type=int, default=20)
    campaign.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    {"client": _client_main, "serve": _serve_main, "campaign": _campaign_main}[args.command](args)


if __name__ == "__main__":
    main()
