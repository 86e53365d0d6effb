"""The embedded engine as a Ray Serve application, on a real local Ray instance with the real default model.

Two replicas behind Ray Serve's HTTP and gRPC proxies on 127.0.0.1: both protocols answer, errors keep their gRPC
status through the proxy, and every turn of a conversation reaches the replica that holds it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from collections.abc import Iterator

import pytest
import ray
from ray import serve

from coral.backends import BackendError, ChatRequest
from coral.backends.grpc_client import GrpcBackend
from coral.backends.retry import RetryPolicy
from coral.sampling import SamplingParams
from coral.serving.apps import EmbeddedAppArgs, build_embedded_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

APP = "tiny"
GREEDY = SamplingParams(temperature=0.0, max_tokens=8)
ASK = [{"role": "user", "content": "Name 3 colours."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, str]]:
    """Ray with 2 CPUs, Serve's proxies on free loopback ports, the app deployed with 2 single-thread replicas."""
    http_port, grpc_port = free_port(), free_port()
    # address="local": a private instance, even where another Ray cluster on this machine is the default.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": http_port},
            grpc_options={
                "port": grpc_port,
                "grpc_servicer_functions": ["coral.wire.coral_chat_pb2_grpc.add_CoralChatServicer_to_server"],
            },
        )
        app = build_embedded_app({"served_name": APP, "engine": {"threads": 1}, "min_replicas": 2, "num_cpus": 1})
        serve.run(app, name=APP, route_prefix=f"/{APP}")
        yield {"http": f"http://127.0.0.1:{http_port}/{APP}/v1", "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        serve.shutdown()
        ray.shutdown()


def post_chat(base_url: str, messages, session_id: str | None = None) -> dict:
    body = {"model": APP, "messages": messages, "temperature": 0.0, "max_tokens": GREEDY.max_tokens}
    headers = {"Content-Type": "application/json"}
    if session_id:
        headers["serve_multiplexed_model_id"] = session_id
    request = urllib.request.Request(f"{base_url}/chat/completions", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def grpc_client(cluster) -> GrpcBackend:
    retry = RetryPolicy(attempts=3, backoff_s=0.5)
    return GrpcBackend(cluster["grpc"], app_name=APP, model=APP, timeout_s=120, retry=retry)


def test_app_arguments_become_serve_options_and_typos_fail_at_build_time():
    args = EmbeddedAppArgs.parse({"min_replicas": 2, "max_ongoing_requests": 10, "num_cpus": 0.5})
    assert args.deployment_options() == {
        "autoscaling_config": {"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 8},
        "max_ongoing_requests": 10,
        "ray_actor_options": {"num_cpus": 0.5},
    }
    with pytest.raises(ValueError, match="unknown argument 'min_replica'; did you mean min_replicas"):
        build_embedded_app({"min_replica": 2})
    with pytest.raises(ValueError, match="EmbeddedAppArgs.engine: .*'thread'"):
        build_embedded_app({"engine": {"thread": 1}})
    with pytest.raises(ValueError, match="max_replicas"):
        build_embedded_app({"min_replicas": 3, "max_replicas": 2})


def test_http_and_grpc_answer_with_the_real_model(cluster):
    answer = post_chat(cluster["http"], ASK)

    async def over_grpc():
        client = grpc_client(cluster)
        try:
            whole = await client.chat(ChatRequest(ASK, GREEDY))
            streamed = [delta async for delta in client.chat_stream(ChatRequest(ASK, GREEDY))]
            try:
                await client.chat(ChatRequest(ASK, GREEDY, model="not-served"))
            except BackendError as exc:
                return whole[0], streamed, exc
            raise AssertionError("an unknown model was answered")
        finally:
            await client.aclose()

    completion, streamed, unknown = asyncio.run(over_grpc())
    http_text = answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 8
    assert completion.text == http_text and completion.completion_tokens == 8  # greedy: same model, same text
    assert len(http_text.split()) >= 3 and answer["replica"] and completion.replica
    assert "".join(d.text for d in streamed) == http_text and streamed[-1].completion.text == http_text
    assert "NOT_FOUND" in str(unknown) and "not-served" in str(unknown) and not unknown.retryable


def test_every_turn_of_a_conversation_reaches_the_same_replica(cluster):
    """Session A talks over gRPC, session B over HTTP, turns interleaved; each turn extends its conversation."""
    a = list(ASK)
    b = [{"role": "user", "content": "Name 3 animals."}]
    seen: dict[str, list[tuple[str, int]]] = {"conv-a": [], "conv-b": []}

    async def talk():
        client = grpc_client(cluster)
        try:
            for _ in range(3):
                (completion,) = await client.chat(ChatRequest(a, GREEDY, session_id="conv-a"))
                seen["conv-a"].append((completion.replica, completion.cached_prompt_tokens))
                a.extend([{"role": "assistant", "content": completion.text}, {"role": "user", "content": "And more?"}])
                answer = await asyncio.to_thread(post_chat, cluster["http"], b, "conv-b")
                seen["conv-b"].append((answer["replica"], answer["usage"]["prompt_tokens_details"]["cached_tokens"]))
                reply = answer["choices"][0]["message"]["content"]
                b.extend([{"role": "assistant", "content": reply}, {"role": "user", "content": "And more?"}])
        finally:
            await client.aclose()

    asyncio.run(talk())
    for session, turns in seen.items():
        replicas = {replica for replica, _ in turns}
        assert len(replicas) == 1 and "" not in replicas, f"{session} moved between replicas: {turns}"
        # The replica's prefix cache held the conversation: later turns recompute only their new tokens.
        assert all(cached > 0 for _, cached in turns[1:]), f"{session} missed its prefix cache: {turns}"
