"""What a client does with each injected fault, one at a time (``Injector.forced``), over HTTP and gRPC.

Broken answers (not JSON, undecodable, ``choices: []``) are retried like a 5xx; a server's requested wait
(``Retry-After``, gRPC pushback) is honoured; a turn records every request it cost and why each failed one failed,
also when the network backend gave up after its own retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Iterator

import pytest

from benchmarks.faults import (
    GRPC_FAULTS,
    HTTP_FAULTS,
    Client,
    Evaluation,
    FaultPlan,
    Injector,
    deterministic_backend,
    faulty_http_app,
    serve_faulty_grpc,
)
from coral.backends.base import BackendError, ChatRequest
from coral.backends.http import retry_after_s
from coral.backends.retry import RetryPolicy
from coral.sampling import SamplingParams
from coral.serving.local import LocalServer
from coral.store import read_records

pytestmark = pytest.mark.timeout(60)

ASK = [{"role": "user", "content": "What is 2 + 2?"}]
CLIENT = Client(timeout_s=0.5, retry=RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=2.0))
WAIT_S = 0.3  # what 429 / RESOURCE_EXHAUSTED ask for


@pytest.fixture(scope="module")
def http_server() -> Iterator[tuple[str, Injector]]:
    injector = Injector(FaultPlan(rate=0.0, retry_after_s=WAIT_S, hang_s=2.0))
    with LocalServer(faulty_http_app(deterministic_backend(), injector), log_level="critical") as server:
        yield server.base_url, injector


def ask(protocol: str, address: str, injector: Injector, faults: list[str], n: int = 1):
    """One chat call with ``faults`` forced on the first requests; returns (completions, requests logged)."""
    injector.forced.extend(faults)
    injector.log.clear()

    async def call():
        backend = CLIENT.backend(protocol, address)
        try:
            return await backend.chat(ChatRequest(ASK, SamplingParams(seed=10), n=n))
        finally:
            await backend.aclose()

    try:
        return asyncio.run(call()), list(injector.log)
    finally:
        injector.forced.clear()


def over_grpc(faults: list[str], n: int = 1):
    injector = Injector(FaultPlan(rate=0.0, kinds=GRPC_FAULTS, retry_after_s=WAIT_S, hang_s=2.0))

    async def scenario():
        server, target = await serve_faulty_grpc(deterministic_backend(), injector)
        try:
            backend = CLIENT.backend("grpc", target)
            injector.forced.extend(faults)
            try:
                return await backend.chat(ChatRequest(ASK, SamplingParams(seed=10), n=n))
            finally:
                await backend.aclose()
        finally:
            await server.stop(None)

    return asyncio.run(scenario()), injector.log


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("malformed", "answer is not JSON"), ("empty", "malformed chat.completion answer"), ("5xx", "HTTP 503"),
     ("disconnect", "ClientPayloadError"), ("hang", "timed out")],
)
def test_http_broken_answers_are_retried_and_recorded(http_server, fault, reason):
    url, injector = http_server
    (completion,), log = ask("http", url, injector, [fault])
    assert [entry.fault for entry in log] == [fault, None]
    assert completion.text == "Let me think. The correct answer is (C)"  # seed 10: the backend's own answer
    assert completion.attempts == 2 and len(completion.failures) == 1 and reason in completion.failures[0]


def test_http_too_few_choices_is_retried(http_server):
    url, injector = http_server
    completions, log = ask("http", url, injector, ["empty", "empty"], n=3)
    assert len(completions) == 3 and completions[0].attempts == 3 and len(log) == 3


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("malformed", "answer could not be decoded"), ("empty", "asked for 1 choice(s), the answer holds 0"),
     ("unavailable", "UNAVAILABLE"), ("hang", "DEADLINE_EXCEEDED")],
)
def test_grpc_broken_answers_are_retried_and_recorded(fault, reason):
    (completion,), log = over_grpc([fault])
    assert [entry.fault for entry in log] == [fault, None]
    assert completion.text == "Let me think. The correct answer is (C)"
    assert completion.attempts == 2 and reason in completion.failures[0]


def test_http_retry_after_is_honoured(http_server):
    url, injector = http_server
    (completion,), log = ask("http", url, injector, ["429"])
    assert [entry.fault for entry in log] == ["429", None] and "HTTP 429" in completion.failures[0]
    assert log[1].at - log[0].at >= WAIT_S  # the policy's own backoff is 0.01-0.015 s


def test_grpc_pushback_is_honoured():
    (completion,), log = over_grpc(["exhausted"])
    assert [entry.fault for entry in log] == ["exhausted", None] and "RESOURCE_EXHAUSTED" in completion.failures[0]
    assert log[1].at - log[0].at >= WAIT_S


def test_retry_after_header_forms():
    assert retry_after_s("2") == 2.0 and retry_after_s("0.5") == 0.5 and retry_after_s("-3") == 0.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= retry_after_s(in_a_minute) <= 60
    assert retry_after_s(None) is retry_after_s("") is retry_after_s("soon") is retry_after_s("nan") is None
    # the wait honours the server, but never past max_backoff_s
    policy = RetryPolicy(backoff_s=0.01, max_backoff_s=5.0)
    assert policy.delay(1, random.Random(0), retry_after_s=2.0) == 2.0
    assert policy.delay(1, random.Random(0), retry_after_s=3600.0) == 5.0


def test_exhausted_transport_retries_are_counted_on_the_error(http_server):
    url, injector = http_server
    with pytest.raises(BackendError, match="gave up after 3 attempts") as error:
        ask("http", url, injector, ["5xx", "malformed", "empty"])
    assert error.value.attempts == 3 and error.value.retryable is False
    assert [reason.split(": ", 2)[-1][:12] for reason in error.value.failures] == [
        "HTTP 503: in", "answer is no", "malformed ch"]


def test_turns_record_every_request_and_why_each_failed(http_server, tmp_path):
    """A turn answered on the third request says 3 attempts and two reasons; a turn whose requests all failed says
    3 attempts (not 1) and three reasons, in order."""
    url, injector = http_server
    evaluation = Evaluation(examples=1, samples=1, max_turns=2, concurrency=1)
    injector.forced.extend(["5xx", "malformed", "ok", "empty", "disconnect", "429"])
    try:
        asyncio.run(evaluation.run(CLIENT.backend("http", url), tmp_path, CLIENT.retry))
    finally:
        injector.forced.clear()
    (record,) = read_records(tmp_path)
    first, second = record.turns[1:]
    assert first.error is None and first.attempts == 3 and first.text.startswith("Let me think")
    assert ["HTTP 503" in first.failures[0], "not JSON" in first.failures[1]] == [True, True]
    assert second.error is not None and "gave up after 3 attempts" in second.error and second.attempts == 3
    assert len(second.failures) == 3 and "no choices" in second.failures[0]
    assert "ClientPayloadError" in second.failures[1] and "HTTP 429" in second.failures[2]
    assert record.stop_reason == "error"


def test_fault_kinds_are_known():
    with pytest.raises(ValueError, match="kinds"):
        FaultPlan(kinds=("gremlins",))
    assert set(HTTP_FAULTS) & set(GRPC_FAULTS) >= {"hang", "malformed", "empty", "long_text"}
