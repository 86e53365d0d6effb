"""coral's gRPC service in front of any ChatBackend.

``ChatServicer`` holds the RPC logic in two transport-free methods, ``respond`` and ``stream``, which take the
request and its metadata and raise ``RpcAbort`` on failure. Its ``Chat`` / ``ChatStream`` methods adapt them to a
plain ``grpc.aio`` server; ``coral.serving.apps`` adapts the same two methods to Ray Serve's gRPC proxy. Proto
messages become coral's types in ``coral.wire.codec``, which the client uses too.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

import grpc

from coral.backends.base import BackendError, ChatBackend, ChatRequest, InvalidRequestError, stream_chat
from coral.wire import coral_chat_pb2 as pb
from coral.wire import coral_chat_pb2_grpc as pb_grpc
from coral.wire.codec import CHANNEL_OPTIONS, Metadata, RpcAbort, from_request, invalid, to_chunk, to_response


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
        """The replica's name as responses report it ("" when none was given)."""
        return (self._replica() if callable(self._replica) else self._replica) or ""

    # -------------------------------------------------------------------- transport-free logic
    async def respond(self, request: pb.ChatRequest, metadata: Metadata = ()) -> pb.ChatResponse:
        """Answer a unary Chat call; failures raise RpcAbort."""
        name, chat = self._accept(request, metadata)
        try:
            completions = await self.backend.chat(chat)
        except Exception as exc:  # every failure becomes a status the client can act on
            raise _status(exc) from exc
        return to_response(completions, model=name, replica=self.replica)

    async def stream(self, request: pb.ChatRequest, metadata: Metadata = ()) -> AsyncIterator[pb.ChatChunk]:
        """Answer a ChatStream call chunk by chunk; failures raise RpcAbort."""
        _, chat = self._accept(request, metadata)
        replica = self.replica
        pieces = stream_chat(self.backend, chat)
        try:
            async for delta in pieces:
                yield to_chunk(delta, replica)
        except Exception as exc:  # see respond
            raise _status(exc) from exc
        finally:
            await pieces.aclose()  # a cancelled call frees the backend at once

    def _accept(self, request: pb.ChatRequest, metadata: Metadata) -> tuple[str, ChatRequest]:
        """Check the token and the request; returns the served model name and the request for the backend."""
        pairs = dict(metadata)
        self._authorize(pairs)
        chat = from_request(request, pairs.items())
        if self._served is None:
            return chat.model or str(getattr(self.backend, "model", "") or ""), chat
        name = chat.model or next(iter(self._served))
        if name not in self._served:
            details = f"ChatRequest.model: {name!r} is not served here (served: {', '.join(self._served)})"
            raise RpcAbort(grpc.StatusCode.NOT_FOUND, details)
        return name, replace(chat, model=self._served[name])

    def _authorize(self, metadata: dict[str, str]) -> None:
        if self._token is None:
            return
        given = metadata.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
            reason = "missing" if not given else "wrong"
            details = f"{reason} token: send metadata 'authorization: Bearer <token>'"
            raise RpcAbort(grpc.StatusCode.UNAUTHENTICATED, details)

    # -------------------------------------------------------------------- grpc.aio adapters
    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        """grpc.aio's unary handler: ``respond``, with an RpcAbort ending the call with its status."""
        try:
            return await self.respond(request, context.invocation_metadata() or ())
        except RpcAbort as abort:
            return await context.abort(abort.code, abort.details)  # raises, ending the call with that status

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatChunk]:
        """grpc.aio's streaming handler: ``stream``, with an RpcAbort ending the call with its status."""
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
    """The status a failure leaves with: UNAVAILABLE when retrying may help, else INVALID_ARGUMENT or INTERNAL.

    Retryable backend errors become UNAVAILABLE (clients retry); a request the model can never answer
    INVALID_ARGUMENT; anything else INTERNAL (neither is retried).
    """
    if isinstance(exc, BackendError) and exc.retryable:
        return RpcAbort(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, InvalidRequestError):
        return invalid(f"ChatRequest.{exc.param or 'messages'}: {exc}")
    return RpcAbort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


async def serve_grpc(
    backend: ChatBackend, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None
) -> tuple[grpc.aio.Server, int]:
    """Start a standalone CoralChat server for ``backend``; returns the server and the port it bound.

    ``port=0`` binds a free one. Stop the server with ``await server.stop(grace)``.
    """
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind a gRPC server to {host}:{port}")
    pb_grpc.add_CoralChatServicer_to_server(ChatServicer(backend, replica=f"{host}:{bound}", token=token), server)
    await server.start()
    return server, bound
