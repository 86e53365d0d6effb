"""coral's OpenAI-compatible server on 127.0.0.1: schema, auth, errors, streaming, the official openai client.

Fast tests put the server in front of scripted backends; the last test runs ``serve_local`` in its own process
with the real embedded engine (SmolLM2-135M-Instruct) and talks to it with the openai package.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.backends.base import Delta, InvalidRequestError
from coral.sampling import SamplingParams
from coral.serving.local import TOKEN_ENV, LocalServer, resolve_token, serve_local
from coral.serving.openai_api import build_openai_app

pytestmark = pytest.mark.timeout(120)

TOKEN = "sekret"
USER = [{"role": "user", "content": "hello there"}]


def script(messages, sampling: SamplingParams):
    last = messages[-1]["content"]
    if last == "fail-busy":
        return BackendError("engine busy", retryable=True)
    if last == "fail-hard":
        return BackendError("engine broken", retryable=False)
    if last == "fail-too-long":
        problem = "prompt of 9000 tokens exceeds the context"
        return InvalidRequestError(problem, param="messages", code="context_length_exceeded")
    return f"seed {sampling.seed} max {sampling.max_tokens} stop {'|'.join(sampling.stop)} t {sampling.temperature}"


class StreamingScripted(ScriptedBackend):
    """A scripted backend that streams word by word; "fail-midway" breaks after the first piece."""

    async def chat_stream(self, request) -> AsyncIterator[Delta]:
        if request.messages[-1]["content"] == "fail-midway":
            yield Delta(0, "partial ")
            raise BackendError("engine died", retryable=True)
        for index, completion in enumerate(await self.chat(request)):
            words = completion.text.split(" ")
            for i, word in enumerate(words):
                yield Delta(index, word if i == len(words) - 1 else word + " ")
            yield Delta(index, "", completion)


def http(
    url: str, body: Any = None, *, token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One request with the standard library: (status, lower-cased headers, body text)."""
    data = body.encode() if isinstance(body, str) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read().decode()


def events(text: str) -> list[Any]:
    """The data lines of a server-sent event stream, JSON-decoded except the final [DONE]."""
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def streaming() -> StreamingScripted:
    return StreamingScripted(script, usage=(6, 3))


@pytest.fixture(scope="module")
def server(streaming) -> Iterator[LocalServer]:
    app = build_openai_app(streaming, {"served": "engine-model"}, token=TOKEN, replica=lambda: "replica-z")
    with LocalServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def open_server() -> Iterator[LocalServer]:
    """No token, a backend that cannot stream, two model names."""
    with LocalServer(build_openai_app(ScriptedBackend(script, usage=(4, 1)), ["a", "b"])) as running:
        yield running


def chat_url(server: LocalServer) -> str:
    return server.base_url + "/chat/completions"


def test_health_needs_no_token_and_models_need_one(server):
    root = server.base_url.removesuffix("/v1")
    assert http(root + "/health", token=None)[::2] == (200, '{"status":"ok"}')
    status, headers, text = http(server.base_url + "/models", token=None)
    assert status == 401 and json.loads(text)["error"]["type"] == "authentication_error"
    assert headers["www-authenticate"] == "Bearer"
    assert http(server.base_url + "/models", token="wrong")[0] == 401
    assert http(chat_url(server), {"model": "served", "messages": USER}, token=None)[0] == 401
    status, _, text = http(server.base_url + "/models")
    assert status == 200
    listing = json.loads(text)
    assert listing["object"] == "list" and [m["id"] for m in listing["data"]] == ["served"]
    assert listing["data"][0]["object"] == "model"


def test_chat_completion_shape_and_values(server, streaming):
    body = {"model": "served", "messages": USER, "n": 2, "seed": 40, "max_completion_tokens": 9, "stop": "END",
            "temperature": 0.5}
    status, headers, text = http(chat_url(server), body, headers={"serve_multiplexed_model_id": "conv-7"})
    answer = json.loads(text)
    assert status == 200 and headers["x-coral-replica"] == "replica-z" and answer["replica"] == "replica-z"
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion"
    assert answer["model"] == "served"
    assert isinstance(answer["created"], int)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert [c["message"] for c in answer["choices"]] == [
        {"role": "assistant", "content": f"seed {seed} max 9 stop END t 0.5"} for seed in (40, 41)
    ]
    assert [c["finish_reason"] for c in answer["choices"]] == ["stop", "stop"]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12,
                               "prompt_tokens_details": {"cached_tokens": 0}}
    call = streaming.calls[-1]
    assert call.session_id == "conv-7" and call.model == "engine-model" and call.messages == USER
    assert call.sampling == SamplingParams(temperature=0.5, top_p=1.0, max_tokens=9, seed=40, stop=("END",))


def test_unknown_model_is_an_openai_404(server):
    status, _, text = http(chat_url(server), {"model": "gpt-9", "messages": USER})
    error = json.loads(text)["error"]
    assert status == 404 and error["code"] == "model_not_found" and error["param"] == "model"
    assert "gpt-9" in error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": []}, "messages"),
        ({"temperature": 9}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"stop": ["ok", 3]}, "stop"),
    ],
)
def test_invalid_requests_are_400s_naming_the_field(server, change, param):
    status, _, text = http(chat_url(server), {"model": "served", "messages": USER, **change})
    error = json.loads(text)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["param"].startswith(param) and param in error["message"]


def test_malformed_json_and_unknown_routes_are_openai_errors(server):
    status, _, text = http(chat_url(server), "{not json")
    assert status == 400 and "error" in json.loads(text)
    status, _, text = http(server.base_url + "/nothing-here")
    assert status == 404 and json.loads(text)["error"]["message"]


def test_backend_errors_map_to_status(server):
    busy = http(chat_url(server), {"model": "served", "messages": [{"role": "user", "content": "fail-busy"}]})
    broken = http(chat_url(server), {"model": "served", "messages": [{"role": "user", "content": "fail-hard"}]})
    assert busy[0] == 503 and "engine busy" in json.loads(busy[2])["error"]["message"]
    assert broken[0] == 500 and "engine broken" in json.loads(broken[2])["error"]["message"]


def test_a_request_the_model_can_never_answer_is_a_400_not_a_retryable_500(server):
    for stream in (False, True):
        body = {"model": "served", "messages": [{"role": "user", "content": "fail-too-long"}], "stream": stream}
        status, _, text = http(chat_url(server), body)
        error = json.loads(text)["error"]
        assert status == 400 and error["code"] == "context_length_exceeded" and error["param"] == "messages"
        assert "9000 tokens exceeds the context" in error["message"] and error["type"] == "invalid_request_error"


def raw_request(server: LocalServer, head: bytes, body: bytes = b"") -> socket.socket:
    """A request written on a plain socket, for what ordinary clients will not send."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    request_line = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    connection.sendall(request_line + head + b"\r\n" + body)
    return connection


def test_request_bodies_over_the_limit_are_413s_before_they_are_read():
    backend = ScriptedBackend(script)
    with LocalServer(build_openai_app(backend, ["m"], max_body_bytes=1000)) as running:
        # Content-Length decides: a client that waits for "100 Continue" (curl) gets the 413 without sending the body.
        with raw_request(running, b"Content-Length: 100000000\r\nExpect: 100-continue\r\n") as connection:
            head, _, body = connection.recv(65536).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "request_too_large"
        # A client that sends the body anyway sees the 413 too, not a connection reset it would retry.
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]}
        status, _, text = http(chat_url(running), big, token=None)
        assert status == 413 and "larger than 1000 bytes" in json.loads(text)["error"]["message"]
        # A chunked body has no declared length: it is cut off once it passes the limit.
        chunk = json.dumps(big).encode()
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
        with raw_request(running, b"Transfer-Encoding: chunked\r\n", chunked) as connection:
            head, _, body = connection.recv(65536).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and "larger than 1000 bytes" in json.loads(body)["error"]["message"]
        assert http(chat_url(running), {"model": "m", "messages": USER}, token=None)[0] == 200
    assert len(backend.calls) == 1


class Hanging(ScriptedBackend):
    """A backend that never answers and records being cancelled."""

    def __init__(self) -> None:
        super().__init__(script)
        self.started, self.cancelled = threading.Event(), threading.Event()

    async def chat(self, request):
        self.started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def test_a_client_that_leaves_cancels_its_generation():
    backend = Hanging()
    with LocalServer(build_openai_app(backend, ["m"])) as running:
        body = json.dumps({"model": "m", "messages": USER}).encode()
        connection = raw_request(running, b"Content-Length: %d\r\n" % len(body), body)
        assert backend.started.wait(10)
        connection.close()
        assert backend.cancelled.wait(10), "the backend kept generating for a client that had gone"


def test_no_api_description_routes_even_with_a_token(server):
    """``/docs``, ``/redoc`` and ``/openapi.json`` would describe the API to anyone: they do not exist."""
    root = server.base_url.removesuffix("/v1")
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert http(root + path, token=None)[0] == 404
        assert http(root + path)[0] == 404


def test_streaming_from_a_streaming_backend(server):
    body = {"model": "served", "messages": USER, "n": 2, "seed": 1, "max_tokens": 7, "stream": True,
            "stream_options": {"include_usage": True}}
    status, headers, text = http(chat_url(server), body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-coral-replica"] == "replica-z"
    stream = events(text)
    assert stream[-1] == "[DONE]"
    chunks = stream[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    for index, seed in ((0, 1), (1, 2)):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert len(mine) > 3  # word by word, not one piece
        assert "".join(c["delta"].get("content", "") for c in mine) == f"seed {seed} max 7 stop  t 1.0"
        assert [c["finish_reason"] for c in mine][-1] == "stop" and all(c["finish_reason"] is None for c in mine[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


def test_streaming_from_a_backend_that_cannot_stream(open_server):
    body = {"model": "b", "messages": USER, "n": 2, "seed": 5, "stream": True}
    status, _, text = http(chat_url(open_server), body, token=None)
    stream = events(text)
    assert status == 200 and stream[-1] == "[DONE]"
    choices = [c["choices"][0] for c in stream[:-1]]
    texts = {choice["index"]: choice["delta"].get("content") for choice in choices if choice["delta"]}
    assert texts == {0: "seed 5 max 1024 stop  t 1.0", 1: "seed 6 max 1024 stop  t 1.0"}
    assert not any("usage" in c for c in stream[:-1])


def test_streaming_failures(server):
    busy = [{"role": "user", "content": "fail-busy"}]
    status, _, text = http(chat_url(server), {"model": "served", "messages": busy, "stream": True})
    assert status == 503 and "engine busy" in text  # failed before the first piece: a real status
    midway = [{"role": "user", "content": "fail-midway"}]
    status, _, text = http(chat_url(server), {"model": "served", "messages": midway, "stream": True})
    stream = events(text)
    assert status == 200 and stream[0]["choices"][0]["delta"]["content"] == "partial "
    assert "engine died" in stream[-2]["error"]["message"] and stream[-1] == "[DONE]"


def test_official_openai_client(server):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=TOKEN, max_retries=0) as client:
            whole = await client.chat.completions.create(model="served", messages=USER, seed=3, max_tokens=4)
            pieces = []
            stream = await client.chat.completions.create(
                model="served", messages=USER, seed=3, max_tokens=4, stream=True
            )
            async for chunk in stream:
                pieces.extend(choice.delta.content or "" for choice in chunk.choices)
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="nope", messages=USER)
            return whole, "".join(pieces)

    whole, streamed = asyncio.run(scenario())
    assert whole.choices[0].message.content == "seed 3 max 4 stop  t 1.0" == streamed
    assert whole.usage.prompt_tokens == 6 and whole.usage.total_tokens == 9


def test_local_server_binds_loopback_by_default():
    with LocalServer(build_openai_app(ScriptedBackend(script), ["m"])) as running:
        assert running.host == "127.0.0.1" and running.base_url == f"http://127.0.0.1:{running.port}/v1"
        assert http(running.base_url.removesuffix("/v1") + "/health", token=None)[0] == 200
        with pytest.raises(ConnectionRefusedError):  # 127.0.0.2 is loopback too, but not the bound address
            socket.create_connection(("127.0.0.2", running.port), timeout=5).close()
    assert inspect.signature(serve_local).parameters["host"].default == "127.0.0.1"


def test_the_token_comes_from_the_command_line_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token() == "from-env" and resolve_token("given") == "given"
    assert resolve_token(token_file=tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text(" \n")
    for token, token_file, problem in ((None, tmp_path / "empty", "is empty"),
                                       (None, tmp_path / "gone", "No such file"),
                                       ("given", tmp_path / "token", "not both")):
        with pytest.raises(ValueError, match=problem):
            resolve_token(token, token_file)
    monkeypatch.delenv(TOKEN_ENV)
    assert resolve_token() is None


@pytest.mark.slow
def test_serve_local_with_the_real_engine(tmp_path: Path):
    """``coral-serve local`` in its own process: token from a file (not in ``ps``), loopback only, real answers,
    400s for requests the model can never answer."""
    log_path = tmp_path / "server.log"
    (tmp_path / "token").write_text("local-token\n")
    # One torch thread: on a small shared machine more threads than free cores slow decoding down many times.
    command = [sys.executable, "-m", "coral.serving.cli", "local", "--port", "0",
               "--token_file", str(tmp_path / "token"), "--engine", "{'threads': 1}"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        base_url = wait_for_url(process, log_path)
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        assert base_url.startswith("http://127.0.0.1:")
        assert not any("local-token" in part for part in psutil.Process(process.pid).cmdline())
        assert http(base_url + "/models", token=None)[0] == 401
        too_long = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "word " * 9000}]}
        status, _, text = http(base_url + "/chat/completions", too_long, token="local-token")
        assert status == 400 and json.loads(text)["error"]["code"] == "context_length_exceeded", text
        endless = {"model": "SmolLM2-135M-Instruct", "messages": USER, "max_tokens": 10**9}
        status, _, text = http(base_url + "/chat/completions", endless, token="local-token")
        assert status == 400 and json.loads(text)["error"]["param"] == "max_tokens", text
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        client = openai.OpenAI(base_url=base_url, api_key="local-token", max_retries=0, timeout=90)
        request = {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        answer = client.chat.completions.create(**request)
        streamed = "".join(
            choice.delta.content or ""
            for chunk in client.chat.completions.create(**request, stream=True)
            for choice in chunk.choices
        )
        client.close()
        assert answer.choices[0].message.content.strip()
        assert answer.usage.completion_tokens <= 8 and answer.usage.prompt_tokens > 5
        assert answer.choices[0].finish_reason in ("stop", "length")
        assert streamed == answer.choices[0].message.content  # greedy: the stream spells out the same answer
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_url(process: subprocess.Popen, log_path: Path, timeout_s: float = 90.0) -> str:
    """The URL serve_local logs, once /health answers there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve_local exited with {process.returncode}:\n{log_path.read_text()}")
        found = re.search(r"at (http://\S+/v1) \(bearer token required\)", log_path.read_text())
        if found:
            try:
                if http(found.group(1).removesuffix("/v1") + "/health", token=None)[0] == 200:
                    return found.group(1)
            except (urllib.error.URLError, ConnectionError):
                pass
        time.sleep(0.2)
    raise AssertionError(f"serve_local not ready after {timeout_s}s:\n{log_path.read_text()}")
