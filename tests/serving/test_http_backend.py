"""The OpenAI-compatible HTTP backend against real servers on 127.0.0.1.

Two servers: coral's own API in front of a ScriptedBackend (values travel both ways), and a tiny FastAPI app that
answers from a plan (failures, odd payloads) and records what it received.
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from coral.backends import BACKENDS, BackendError, ChatRequest, ScriptedBackend
from coral.backends.http import OpenAIHTTPBackend
from coral.backends.retry import RetryPolicy
from coral.sampling import SamplingParams
from coral.serving.local import LocalServer
from coral.serving.openai_api import build_openai_app

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = RetryPolicy(attempts=5, backoff_s=0.01, max_backoff_s=0.05)
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def run(coro):
    return asyncio.run(coro)


async def chat_and_close(backend: OpenAIHTTPBackend, *args: Any, **kwargs: Any):
    try:
        return await backend.chat(ChatRequest(*args, **kwargs))
    finally:
        await backend.aclose()


class ClientRecorder:
    """ASGI wrapper that records the client address of every request: one address per TCP connection."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.clients: list[tuple[str, int]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.clients.append(tuple(scope["client"]))
        await self.app(scope, receive, send)


def describe(messages, sampling: SamplingParams) -> str:
    return f"seed={sampling.seed} max={sampling.max_tokens} stop={'|'.join(sampling.stop)} t={sampling.temperature}"


@pytest.fixture(scope="module")
def scripted() -> ScriptedBackend:
    return ScriptedBackend(describe, usage=(5, 2))


@pytest.fixture(scope="module")
def coral_server(scripted) -> Iterator[tuple[LocalServer, ClientRecorder]]:
    recorder = ClientRecorder(build_openai_app(scripted, ["tiny"], replica="replica-a"))
    with LocalServer(recorder) as server:
        yield server, recorder


class Planned:
    """A fake OpenAI server: each request takes the next step of ``plan`` (a status, "sleep", or "ok")."""

    def __init__(self) -> None:
        self.plan: list[Any] = []
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.answer)

    async def answer(self, request: Request) -> JSONResponse:
        self.received.append((dict(request.headers), await request.json()))
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "sleep":
            await asyncio.sleep(1.0)
        if isinstance(step, int):
            return JSONResponse({"error": {"message": f"planned failure {step}", "type": "x"}}, status_code=step)
        body = {
            "id": "x",
            "object": "chat.completion",
            "choices": [  # out of order on purpose; no per-choice usage, no top-level replica
                {"index": 2, "message": {"role": "assistant", "content": "c"}, "finish_reason": "stop"},
                {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "length"},
                {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "stop"},
            ],
            "usage": {
                "prompt_tokens": 9, "completion_tokens": 10, "total_tokens": 19,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
        return JSONResponse(body, headers={"x-coral-replica": "from-header"})


@pytest.fixture(scope="module")
def planned_server() -> Iterator[tuple[LocalServer, Planned]]:
    fake = Planned()
    with LocalServer(fake.app) as server:
        yield server, fake


@pytest.fixture
def planned(planned_server) -> tuple[LocalServer, Planned]:
    server, fake = planned_server
    fake.plan.clear()
    fake.received.clear()
    return server, fake


def test_registered_by_name():
    assert BACKENDS.get("openai_http") is OpenAIHTTPBackend


def test_values_travel_to_the_engine_and_back(coral_server, scripted):
    server, _ = coral_server
    backend = OpenAIHTTPBackend(server.base_url, model="tiny")
    sampling = SamplingParams(temperature=0.3, max_tokens=12, seed=7, stop=("x", "y"), ignore_eos=True)
    answers = run(chat_and_close(backend, ASK, sampling, n=3, session_id="conv-1"))

    assert [a.text for a in answers] == [f"seed={s} max=12 stop=x|y t=0.3" for s in (7, 8, 9)]
    assert all(a.prompt_tokens == 5 and a.completion_tokens == 2 for a in answers)
    assert all(a.replica == "replica-a" and a.finish_reason == "stop" and a.latency_s > 0 for a in answers)
    call = scripted.calls[-1]
    assert call.session_id == "conv-1" and call.model == "tiny" and call.messages == ASK
    assert call.sampling == sampling


def test_model_argument_overrides_default_and_is_required(coral_server):
    server, _ = coral_server
    with pytest.raises(BackendError, match="does not exist") as error:
        run(chat_and_close(OpenAIHTTPBackend(server.base_url, model="tiny"), ASK, SamplingParams(), model="other"))
    assert error.value.retryable is False and "404" in str(error.value)
    with pytest.raises(BackendError, match="no model given") as error:
        run(chat_and_close(OpenAIHTTPBackend(server.base_url), ASK, SamplingParams()))
    assert error.value.retryable is False


def test_one_connection_for_sequential_requests_and_limit_when_concurrent(coral_server):
    server, recorder = coral_server
    backend = OpenAIHTTPBackend(server.base_url, model="tiny", max_connections=2)

    async def scenario():
        try:
            recorder.clients.clear()
            for i in range(20):
                await backend.chat(ChatRequest(ASK, SamplingParams(seed=i)))
            sequential = list(recorder.clients)
            recorder.clients.clear()
            await asyncio.gather(*(backend.chat(ChatRequest(ASK, SamplingParams(seed=i))) for i in range(12)))
            return sequential, list(recorder.clients)
        finally:
            await backend.aclose()

    sequential, concurrent = run(scenario())
    assert len(sequential) == 20 and len(set(sequential)) == 1
    assert len(concurrent) == 12 and len(set(concurrent)) <= 2


def test_backend_is_reusable_in_a_new_event_loop(coral_server):
    server, _ = coral_server
    backend = OpenAIHTTPBackend(server.base_url, model="tiny")
    first = run(chat_and_close(backend, ASK, SamplingParams(seed=1)))
    second = run(chat_and_close(backend, ASK, SamplingParams(seed=2)))
    assert first[0].text.startswith("seed=1") and second[0].text.startswith("seed=2")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_session_of_a_finished_loop_is_replaced(coral_server):
    """Without aclose the first loop's connection cannot be closed by aiohttp; Python closes it when collected."""
    server, _ = coral_server
    backend = OpenAIHTTPBackend(server.base_url, model="tiny")
    first = run(backend.chat(ChatRequest(ASK, SamplingParams(seed=1))))
    second = run(chat_and_close(backend, ASK, SamplingParams(seed=2)))
    assert first[0].text.startswith("seed=1") and second[0].text.startswith("seed=2")
    gc.collect()  # report the dropped socket here, not in a later test


def test_retries_overload_then_parses_a_foreign_answer(planned):
    server, fake = planned
    fake.plan[:] = [503, 429, "ok"]
    backend = OpenAIHTTPBackend(server.base_url, model="m", retry=FAST_RETRY)
    answers = run(chat_and_close(backend, ASK, SamplingParams(seed=3), n=3))

    assert len(fake.received) == 3
    assert [a.text for a in answers] == ["a", "b", "c"]
    assert [a.finish_reason for a in answers] == ["length", "stop", "stop"]
    # usage is per request: the prompt counts for every choice, the completion total is split 4 + 3 + 3
    assert [a.completion_tokens for a in answers] == [4, 3, 3]
    assert all(a.prompt_tokens == 9 and a.cached_prompt_tokens == 4 for a in answers)
    assert all(a.replica == "from-header" for a in answers)


def test_client_error_fails_at_once_with_the_servers_message(planned):
    server, fake = planned
    fake.plan[:] = [400]
    backend = OpenAIHTTPBackend(server.base_url, model="m", retry=FAST_RETRY)
    with pytest.raises(BackendError) as error:
        run(chat_and_close(backend, ASK, SamplingParams()))
    assert error.value.retryable is False
    assert "HTTP 400" in str(error.value) and "planned failure 400" in str(error.value)
    assert len(fake.received) == 1


def test_exhausted_retries_are_final(planned):
    server, fake = planned
    fake.plan[:] = [502, 503, 504]
    backend = OpenAIHTTPBackend(server.base_url, model="m", retry=RetryPolicy(attempts=3, backoff_s=0.01))
    with pytest.raises(BackendError, match="after 3 attempts") as error:
        run(chat_and_close(backend, ASK, SamplingParams()))
    assert error.value.retryable is False and "HTTP 504" in str(error.value)
    assert len(fake.received) == 3


def test_timeouts_are_retried(planned):
    server, fake = planned
    fake.plan[:] = ["sleep", "sleep"]
    retry = RetryPolicy(attempts=2, backoff_s=0.01)
    backend = OpenAIHTTPBackend(server.base_url, model="m", timeout_s=0.2, retry=retry)
    with pytest.raises(BackendError, match="timed out") as error:
        run(chat_and_close(backend, ASK, SamplingParams()))
    assert error.value.retryable is False and "2 attempts" in str(error.value)
    assert len(fake.received) == 2


def test_connection_refused_is_retried_then_final():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = OpenAIHTTPBackend(f"http://127.0.0.1:{port}/v1", model="m", retry=RetryPolicy(attempts=2, backoff_s=0.01))
    with pytest.raises(BackendError, match="after 2 attempts") as error:
        run(chat_and_close(backend, ASK, SamplingParams()))
    assert error.value.retryable is False


def test_headers_and_body(planned, monkeypatch):
    server, fake = planned
    monkeypatch.setenv("CORAL_TEST_KEY", "key-from-env")
    backend = OpenAIHTTPBackend(server.base_url, model="m", api_key_env="CORAL_TEST_KEY", headers={"X-Team": "blue"})
    run(chat_and_close(backend, ASK, SamplingParams(temperature=0.0, max_tokens=5)))
    headers, body = fake.received[-1]
    assert headers["authorization"] == "Bearer key-from-env" and headers["x-team"] == "blue"
    assert "serve_multiplexed_model_id" not in headers
    # unset options stay out of the body: hosted APIs reject fields they do not know
    assert body == {"model": "m", "messages": ASK, "temperature": 0.0, "top_p": 0.9, "max_tokens": 5, "n": 1}
    assert "key-from-env" not in repr(backend)

    explicit = OpenAIHTTPBackend(server.base_url, model="m", api_key="explicit", api_key_env="CORAL_TEST_KEY")
    run(chat_and_close(explicit, ASK, SamplingParams(), session_id="s-9"))
    headers, _ = fake.received[-1]
    assert headers["authorization"] == "Bearer explicit" and headers["serve_multiplexed_model_id"] == "s-9"


def test_bad_constructor_arguments_name_the_field():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIHTTPBackend("127.0.0.1:8000/v1")
    with pytest.raises(ValueError, match="max_connections"):
        OpenAIHTTPBackend("http://127.0.0.1:8000/v1", max_connections=0)
