"""coral's gRPC service in front of any ChatBackend, and the one place proto messages meet coral's types.

``to_request`` / ``from_request`` and ``to_response`` / ``from_response`` (plus the chunk pair for streaming) are
the only conversions between ``coral_chat.proto`` and (messages, SamplingParams, n, session id) or Completions;
the client (``coral.backends.grpc_client``), this server and the Ray Serve application all use them.

``ChatServicer`` holds the RPC logic in two transport-free methods, ``respond`` and ``stream``, which take the
request and its metadata and raise ``RpcAbort`` on failure. Its ``Chat`` / ``ChatStream`` methods adapt them to a
plain ``grpc.aio`` server; ``coral.serving.apps`` adapts the same two methods to Ray Serve's gRPC proxy.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import grpc

from coral.backends.base import (
    BackendError,
    ChatBackend,
    Completion,
    Delta,
    InvalidRequestError,
    Message,
    stream_chat,
)
from coral.sampling import SamplingParams
from coral.serving.proto import coral_chat_pb2 as pb
from coral.serving.proto import coral_chat_pb2_grpc as pb_grpc

ROLES = ("assistant", "system", "user")
MAX_N = 128
"""Most completions one request may ask for."""
SESSION_METADATA = "multiplexed_model_id"
"""gRPC metadata naming the conversation; Ray Serve's gRPC proxy routes on it (model multiplexing)."""
MAX_MESSAGE_BYTES = 64 * 2**20
"""Largest request or response on the wire: long conversations outgrow gRPC's 4 MiB default."""
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

Metadata = Iterable[tuple[str, str]]


class RpcAbort(Exception):
    """An RPC fails with ``code``; ``details`` tells the caller why (naming the field for bad input)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ChatCall:
    """A ChatRequest in coral's own types."""

    messages: list[Message]
    sampling: SamplingParams
    model: str | None
    n: int
    session_id: str | None


# ----------------------------------------------------------------------------------------------- conversions
def to_request(
    messages: Sequence[Message],
    sampling: SamplingParams,
    *,
    model: str | None = None,
    n: int = 1,
    session_id: str | None = None,
) -> pb.ChatRequest:
    """The ChatRequest for a chat call; every sampling field is set, so the server's defaults never apply."""
    return pb.ChatRequest(
        model=model or "",
        messages=[pb.Message(role=m["role"], content=m["content"]) for m in messages],
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        n=n,
        seed=sampling.seed,
        stop=list(sampling.stop),
        ignore_eos=sampling.ignore_eos,
        session_id=session_id or "",
    )


def from_request(request: pb.ChatRequest, metadata: Metadata = ()) -> ChatCall:
    """Validate a ChatRequest; bad input raises RpcAbort(INVALID_ARGUMENT) naming the field.

    The session id is the request's ``session_id`` or else the ``multiplexed_model_id`` metadata.
    """
    if not request.messages:
        raise _invalid("ChatRequest.messages: at least one message is required")
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise _invalid(f"ChatRequest.messages[{i}].role: must be one of {', '.join(ROLES)}, got {message.role!r}")
    if request.n > MAX_N:
        raise _invalid(f"ChatRequest.n: must be at most {MAX_N}, got {request.n}")
    given = {f: getattr(request, f) for f in ("temperature", "top_p", "max_tokens", "seed") if request.HasField(f)}
    try:
        sampling = SamplingParams(**given, stop=tuple(request.stop), ignore_eos=request.ignore_eos)
    except ValueError as exc:
        raise _invalid(f"ChatRequest: {exc}") from None
    session_id = request.session_id or dict(metadata).get(SESSION_METADATA) or None
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    return ChatCall(messages, sampling, request.model or None, max(request.n, 1), session_id)


def to_response(completions: Sequence[Completion], *, model: str, replica: str) -> pb.ChatResponse:
    """A ChatResponse holding every choice; its latency is the slowest choice's."""
    return pb.ChatResponse(
        id=f"chat-{uuid.uuid4().hex}",
        model=model,
        choices=[_choice(i, c) for i, c in enumerate(completions)],
        latency_s=max((c.latency_s for c in completions), default=0.0),
        replica=replica,
    )


def from_response(response: pb.ChatResponse, latency_s: float | None = None) -> list[Completion]:
    """Completions of a ChatResponse, in choice order; ``latency_s`` overrides the server's (the caller's view)."""
    latency = response.latency_s if latency_s is None else latency_s
    choices = sorted(response.choices, key=lambda c: c.index)
    return [_completion(c, latency, response.replica) for c in choices]


def to_chunk(delta: Delta, replica: str) -> pb.ChatChunk:
    finish = _choice(delta.index, delta.completion) if delta.completion is not None else None
    return pb.ChatChunk(index=delta.index, text=delta.text, finish=finish, replica=replica)


def from_chunk(chunk: pb.ChatChunk, latency_s: float) -> Delta:
    completion = _completion(chunk.finish, latency_s, chunk.replica) if chunk.HasField("finish") else None
    return Delta(chunk.index, chunk.text, completion)


def _choice(index: int, completion: Completion) -> pb.Choice:
    return pb.Choice(
        index=index,
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cached_prompt_tokens=completion.cached_prompt_tokens,
    )


def _completion(choice: pb.Choice, latency_s: float, replica: str) -> Completion:
    return Completion(
        text=choice.text,
        finish_reason=choice.finish_reason,
        prompt_tokens=choice.prompt_tokens,
        completion_tokens=choice.completion_tokens,
        latency_s=latency_s,
        cached_prompt_tokens=choice.cached_prompt_tokens,
        replica=replica or None,
    )


def _invalid(details: str) -> RpcAbort:
    return RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, details)


# ----------------------------------------------------------------------------------------------- the service
class ChatServicer(pb_grpc.CoralChatServicer):
    """CoralChat over a ChatBackend.

    Args:
        backend: answers the requests.
        model_names: the names clients may ask for, as in ``build_openai_app``: a list passes the name to the
            backend as its model; a mapping {served name: backend model} serves a model under another name; an
            empty request model means the first one. None: any name goes to the backend unchanged.
        replica: the name reported in every response (or a function giving it), so clients can see which
            replica answered.
        token: when set, every call must carry metadata ``authorization: Bearer <token>``.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        model_names: Sequence[str] | Mapping[str, str] | None = None,
        replica: str | Callable[[], str] | None = None,
        token: str | None = None,
    ) -> None:
        self.backend = backend
        self._served = _served_names(model_names)
        self._replica = replica
        self._token = token

    @property
    def replica(self) -> str:
        return (self._replica() if callable(self._replica) else self._replica) or ""

    # -------------------------------------------------------------------- transport-free logic
    async def respond(self, request: pb.ChatRequest, metadata: Metadata = ()) -> pb.ChatResponse:
        """Answer a unary Chat call; failures raise RpcAbort."""
        name, call = self._accept(request, metadata)
        try:
            completions = await self.backend.chat(
                call.messages, call.sampling, model=call.model, n=call.n, session_id=call.session_id
            )
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status the client can act on
            raise _status(exc) from exc
        return to_response(completions, model=name, replica=self.replica)

    async def stream(self, request: pb.ChatRequest, metadata: Metadata = ()) -> AsyncIterator[pb.ChatChunk]:
        """Answer a ChatStream call chunk by chunk; failures raise RpcAbort."""
        _, call = self._accept(request, metadata)
        replica = self.replica
        pieces = stream_chat(
            self.backend, call.messages, call.sampling, model=call.model, n=call.n, session_id=call.session_id
        )
        try:
            async for delta in pieces:
                yield to_chunk(delta, replica)
        except Exception as exc:  # noqa: BLE001 - see respond
            raise _status(exc) from exc
        finally:
            await pieces.aclose()  # a cancelled call frees the backend at once

    def _accept(self, request: pb.ChatRequest, metadata: Metadata) -> tuple[str, ChatCall]:
        """Check the token and the request; returns the served model name and the call for the backend."""
        pairs = dict(metadata)
        self._authorize(pairs)
        call = from_request(request, pairs.items())
        if self._served is None:
            return call.model or str(getattr(self.backend, "model", "") or ""), call
        name = call.model or next(iter(self._served))
        if name not in self._served:
            details = f"ChatRequest.model: {name!r} is not served here (served: {', '.join(self._served)})"
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, details)
        return name, replace(call, model=self._served[name])

    def _authorize(self, metadata: dict[str, str]) -> None:
        if self._token is None:
            return
        given = metadata.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            reason = "missing" if not given else "wrong"
            details = f"{reason} token: send metadata 'authorization: Bearer <token>'"
            raise RpcAbort(grpc.StatusCode.UNAUTHENTICATED, details)

    # -------------------------------------------------------------------- grpc.aio adapters
    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:  # noqa: N802
        try:
            return await self.respond(request, context.invocation_metadata() or ())
        except RpcAbort as abort:
            return await context.abort(abort.code, abort.details)  # raises, ending the call with that status

    async def ChatStream(  # noqa: N802
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        try:
            async for chunk in self.stream(request, context.invocation_metadata() or ()):
                yield chunk
        except RpcAbort as abort:
            await context.abort(abort.code, abort.details)


def _served_names(model_names: Sequence[str] | Mapping[str, str] | None) -> dict[str, str] | None:
    """{served name: backend model}, or None when any name is passed through."""
    if model_names is None:
        return None
    if not model_names:
        raise ValueError("ChatServicer: model_names is empty; name at least one model or pass None")
    return dict(model_names) if isinstance(model_names, Mapping) else {name: name for name in model_names}


def _status(exc: Exception) -> RpcAbort:
    """Retryable backend errors become UNAVAILABLE (clients retry); a request the model can never answer
    INVALID_ARGUMENT; anything else INTERNAL (neither is retried)."""
    if isinstance(exc, BackendError) and exc.retryable:
        return RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, InvalidRequestError):
        return _invalid(f"ChatRequest.{exc.param or 'messages'}: {exc}")
    return RpcAbort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def serve_grpc(
    backend: ChatBackend, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a standalone CoralChat server for ``backend``; returns the server and the port it bound (``port=0``:
    a free one). Stop it with ``await server.stop(grace)``."""
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind a gRPC server to {host}:{port}")
    pb_grpc.add_CoralChatServicer_to_server(ChatServicer(backend, replica=f"{host}:{bound}", token=token), server)
    await server.start()
    return server, bound
