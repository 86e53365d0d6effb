"""coral's gRPC protocol: a scripted backend behind a real grpc.aio server on 127.0.0.1, called by GrpcBackend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.backends.base import BACKENDS, ChatRequest, Delta, InvalidRequestError
from coral.backends.grpc_client import GrpcBackend
from coral.backends.retry import RetryPolicy
from coral.sampling import SamplingParams
from coral.serving.grpc_server import ChatServicer, serve_grpc
from coral.wire import coral_chat_pb2 as pb
from coral.wire import coral_chat_pb2_grpc as pb_grpc
from coral.wire.codec import RpcAbort, to_request

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "libs" / "coral" / "wire"
FAST_RETRY = RetryPolicy(attempts=5, backoff_s=0.01)
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "two plus two"}]


@asynccontextmanager
async def served(backend, token: str | None = None):
    """A CoralChat server for ``backend`` on a free loopback port; yields its target."""
    server, port = await serve_grpc(backend, token=token)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def echo(messages, sampling) -> str:
    return f"{messages[-1]['content']} | seed={sampling.seed} t={sampling.temperature} stop={','.join(sampling.stop)}"


class WordStreamer(ScriptedBackend):
    """A scripted backend that streams its reply word by word, as a token-streaming engine would."""

    async def chat_stream(self, request):
        completions = await self.chat(request)
        for index, completion in enumerate(completions):
            words = completion.text.split(" ")
            for i, word in enumerate(words):
                last = i == len(words) - 1
                yield Delta(index, word if last else word + " ", completion if last else None)


def test_unary_chat_carries_every_value_both_ways():
    backend = ScriptedBackend(echo, usage=(11, 4))
    sampling = SamplingParams(temperature=0.7, top_p=0.85, max_tokens=33, seed=5, stop=("END", "##"), ignore_eos=True)

    async def scenario():
        async with served(backend) as target:
            client = GrpcBackend(target, model="tiny", retry=FAST_RETRY)
            try:
                return target, await client.chat(ChatRequest(ASK, sampling))
            finally:
                await client.aclose()

    target, (completion,) = asyncio.run(scenario())
    assert completion.text == "two plus two | seed=5 t=0.7 stop=END,##"
    assert (completion.finish_reason, completion.prompt_tokens, completion.completion_tokens) == ("stop", 11, 4)
    assert completion.replica == target and completion.latency_s > 0
    call = backend.calls[0]
    assert call.messages == ASK and call.model == "tiny" and call.session_id is None
    assert call.sampling == sampling  # doubles on the wire keep 0.7 / 0.85 exact


def test_n_choices_use_consecutive_seeds():
    backend = ScriptedBackend(lambda messages, sampling: f"seed={sampling.seed}")

    async def scenario():
        async with served(backend) as target:
            return await GrpcBackend(target).chat(ChatRequest(ASK, SamplingParams(seed=7), n=3))

    assert [c.text for c in asyncio.run(scenario())] == ["seed=7", "seed=8", "seed=9"]


def test_session_id_reaches_the_backend_from_request_or_metadata():
    backend = ScriptedBackend(echo)
    request = pb.ChatRequest(messages=[pb.Message(role="user", content="hi")], max_tokens=4)

    async def scenario():
        async with served(backend) as target:
            await GrpcBackend(target).chat(ChatRequest(ASK, SamplingParams(), session_id="conv-client"))
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.CoralChatStub(channel)
                await stub.Chat(request, metadata=[("multiplexed_model_id", "conv-metadata")])
                with_field = pb.ChatRequest()
                with_field.CopyFrom(request)
                with_field.session_id = "conv-field"
                await stub.Chat(with_field)
                await stub.Chat(request)

    asyncio.run(scenario())
    assert [c.session_id for c in backend.calls] == ["conv-client", "conv-metadata", "conv-field", None]
    assert backend.calls[1].sampling == SamplingParams(max_tokens=4)  # unset fields take coral's defaults


def test_streamed_chunks_reassemble_to_the_text():
    backend = WordStreamer(lambda messages, sampling: f"the answer with seed {sampling.seed} is four")

    async def scenario():
        async with served(backend) as target:
            client = GrpcBackend(target)
            request = ChatRequest(ASK, SamplingParams(seed=3), n=2, session_id="s")
            return target, [d async for d in client.chat_stream(request)]

    target, deltas = asyncio.run(scenario())
    for index, seed in ((0, 3), (1, 4)):
        mine = [d for d in deltas if d.index == index]
        assert len(mine) == 7  # one chunk per word
        assert "".join(d.text for d in mine) == f"the answer with seed {seed} is four"
        assert [d.completion is not None for d in mine] == [False] * 6 + [True]
        final = mine[-1].completion
        assert final.text == f"the answer with seed {seed} is four" and final.replica == target
    assert backend.calls[0].session_id == "s"


def test_unavailable_is_retried_until_it_succeeds():
    failures = iter([BackendError("busy"), BackendError("still busy")])
    backend = ScriptedBackend(lambda messages, sampling: next(failures, "done"))

    async def scenario():
        async with served(backend) as target:
            return await GrpcBackend(target, retry=FAST_RETRY).chat(ChatRequest(ASK, SamplingParams(seed=1)))

    assert asyncio.run(scenario())[0].text == "done"
    assert len(backend.calls) == 3


def test_a_stream_opened_after_a_retry_counts_the_failed_request():
    failures = iter([BackendError("busy")])
    backend = ScriptedBackend(lambda messages, sampling: next(failures, "done"))

    async def scenario():
        async with served(backend) as target:
            client = GrpcBackend(target, retry=FAST_RETRY)
            return [d async for d in client.chat_stream(ChatRequest(ASK, SamplingParams(seed=1)))]

    (delta,) = asyncio.run(scenario())
    assert delta.text == "done" and delta.completion.attempts == 2
    assert len(delta.completion.failures) == 1 and "UNAVAILABLE: busy" in delta.completion.failures[0]


def test_retries_run_out_as_a_final_error():
    backend = ScriptedBackend(lambda messages, sampling: BackendError("overloaded"))

    async def scenario():
        async with served(backend) as target:
            client = GrpcBackend(target, retry=RetryPolicy(attempts=2, backoff_s=0.01))
            await client.chat(ChatRequest(ASK, SamplingParams()))

    with pytest.raises(BackendError, match="gave up after 2 attempts.*UNAVAILABLE: overloaded") as caught:
        asyncio.run(scenario())
    assert caught.value.retryable is False and len(backend.calls) == 2


def test_bad_input_and_engine_faults_are_not_retried():
    backend = ScriptedBackend(lambda messages, sampling: BackendError("chat template rejects it", retryable=False))

    async def scenario():
        async with served(backend) as target:
            client = GrpcBackend(target, retry=FAST_RETRY)
            errors = []
            for messages in ([{"role": "robot", "content": "beep"}], ASK):
                try:
                    await client.chat(ChatRequest(messages, SamplingParams()))
                except BackendError as exc:
                    errors.append(exc)
            return errors

    invalid, internal = asyncio.run(scenario())
    assert "INVALID_ARGUMENT" in str(invalid) and "messages[0].role" in str(invalid) and not invalid.retryable
    assert "INTERNAL" in str(internal) and "chat template rejects it" in str(internal) and not internal.retryable
    assert len(backend.calls) == 1  # the invalid request never reached the backend; the fault was not retried


def test_a_request_the_model_can_never_answer_is_invalid_argument():
    too_long = InvalidRequestError("prompt of 9000 tokens exceeds the context", param="messages")
    servicer = ChatServicer(ScriptedBackend(lambda messages, sampling: too_long))

    async def scenario():
        aborts = []
        for call in (servicer.respond, lambda request: anext(servicer.stream(request))):  # unary, then streamed
            try:
                await call(to_request(ChatRequest(ASK, SamplingParams())))
            except RpcAbort as abort:
                aborts.append(abort)
        return aborts

    aborts = asyncio.run(scenario())
    assert len(aborts) == 2
    for abort in aborts:
        assert abort.code == grpc.StatusCode.INVALID_ARGUMENT
        assert abort.details == "ChatRequest.messages: prompt of 9000 tokens exceeds the context"


def test_token_is_required_when_set():
    backend = ScriptedBackend(echo)

    async def scenario():
        async with served(backend, token="s3cret") as target:
            outcomes = []
            for token in (None, "wrong", "s3cret"):
                try:
                    client = GrpcBackend(target, token=token)
                    outcomes.append((await client.chat(ChatRequest(ASK, SamplingParams())))[0].text)
                except BackendError as exc:
                    outcomes.append(str(exc))
            return outcomes

    missing, wrong, right = asyncio.run(scenario())
    assert "UNAUTHENTICATED: missing token" in missing and "UNAUTHENTICATED: wrong token" in wrong
    assert right.startswith("two plus two") and len(backend.calls) == 1


def test_one_channel_serves_every_call_and_a_new_event_loop_gets_its_own(monkeypatch):
    opened = []
    real = grpc.aio.insecure_channel

    def counting(*args, **kwargs):
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(grpc.aio, "insecure_channel", counting)
    backend = ScriptedBackend(lambda messages, sampling: f"seed={sampling.seed}")
    client = GrpcBackend("127.0.0.1:1", retry=FAST_RETRY)  # re-targeted below, once the port is known

    async def calls(count: int) -> list[str]:
        async with served(backend) as target:
            client.target = target
            requests = [ChatRequest(ASK, SamplingParams(seed=i)) for i in range(count)]
            replies = await asyncio.gather(*(client.chat(request) for request in requests))
            return [r[0].text for r in replies]

    assert asyncio.run(calls(10)) == [f"seed={i}" for i in range(10)]
    assert len(opened) == 1 and client._channel is opened[0]
    assert asyncio.run(calls(1)) == ["seed=0"]  # a later asyncio.run: the old loop's channel is replaced
    assert len(opened) == 2
    asyncio.run(client.aclose())


def test_served_names_map_to_backend_models_and_unknown_names_are_not_found():
    backend = ScriptedBackend(echo)

    async def scenario():
        server = grpc.aio.server()
        servicer = ChatServicer(backend, model_names={"tiny": "/models/smol"}, replica="r1")
        pb_grpc.add_CoralChatServicer_to_server(servicer, server)
        target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        try:
            named = await GrpcBackend(target, model="tiny").chat(ChatRequest(ASK, SamplingParams()))
            default = await GrpcBackend(target).chat(ChatRequest(ASK, SamplingParams()))
            try:
                await GrpcBackend(target, model="huge").chat(ChatRequest(ASK, SamplingParams()))
            except BackendError as exc:
                return named[0], default[0], exc
        finally:
            await server.stop(None)

    named, default, unknown = asyncio.run(scenario())
    assert [c.model for c in backend.calls] == ["/models/smol", "/models/smol"]
    assert named.replica == default.replica == "r1"
    assert "NOT_FOUND" in str(unknown) and "'huge' is not served here (served: tiny)" in str(unknown)
    assert not unknown.retryable


def test_grpc_backend_is_registered():
    assert BACKENDS.get("grpc") is GrpcBackend


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    """The stubs are committed so users need no build step; regenerating them must change nothing."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", "libs", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", "libs/coral/wire/coral_chat.proto"],
        cwd=ROOT, check=True,
    )
    fresh = tmp_path / "coral" / "wire"
    names = ["coral_chat_pb2.py", "coral_chat_pb2.pyi", "coral_chat_pb2_grpc.py"]
    assert sorted(p.name for p in fresh.iterdir()) == names
    for name in names:
        assert (fresh / name).read_text() == (PROTO_DIR / name).read_text(), f"{name} is stale: regenerate it"
