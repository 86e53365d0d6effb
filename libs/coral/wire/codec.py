"""The one place proto messages meet coral's types: ChatRequest, Completion and Delta to and from ``coral_chat``.

``to_request`` / ``from_request`` and ``to_response`` / ``from_response`` (plus the chunk pair for streaming) are
the only conversions; the client (``coral.backends.grpc_client``), the standalone server
(``coral.serving.grpc_server``) and the Ray Serve application all use them, with the same message size limits.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import grpc

from coral.backends.base import MAX_N, ChatRequest, Completion, Delta
from coral.sampling import SamplingParams
from coral.wire import coral_chat_pb2 as pb

ROLES = ("assistant", "system", "user")
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


def to_request(request: ChatRequest) -> pb.ChatRequest:
    """The proto ChatRequest for a chat request; every sampling field is set, so the server's defaults never apply."""
    sampling = request.sampling
    return pb.ChatRequest(
        model=request.model or "",
        messages=[pb.Message(role=m["role"], content=m["content"]) for m in request.messages],
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        n=request.n,
        seed=sampling.seed,
        stop=list(sampling.stop),
        ignore_eos=sampling.ignore_eos,
        session_id=request.session_id or "",
    )


def from_request(request: pb.ChatRequest, metadata: Metadata = ()) -> ChatRequest:
    """Validate a proto ChatRequest; bad input raises RpcAbort(INVALID_ARGUMENT) naming the field.

    The session id is the request's ``session_id`` or else the ``multiplexed_model_id`` metadata.
    """
    if not request.messages:
        raise invalid("ChatRequest.messages: at least one message is required")
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise invalid(f"ChatRequest.messages[{i}].role: must be one of {', '.join(ROLES)}, got {message.role!r}")
    if request.n > MAX_N:
        raise invalid(f"ChatRequest.n: must be at most {MAX_N}, got {request.n}")
    given = {f: getattr(request, f) for f in ("temperature", "top_p", "max_tokens", "seed") if request.HasField(f)}
    try:
        sampling = SamplingParams(**given, stop=tuple(request.stop), ignore_eos=request.ignore_eos)
    except ValueError as exc:
        raise invalid(f"ChatRequest: {exc}") from None
    session_id = request.session_id or dict(metadata).get(SESSION_METADATA) or None
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    return ChatRequest(messages, sampling, request.model or None, max(request.n, 1), session_id)


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
    """One streamed piece on the wire; the last piece of a choice carries its finish as a Choice."""
    finish = _choice(delta.index, delta.completion) if delta.completion is not None else None
    return pb.ChatChunk(index=delta.index, text=delta.text, finish=finish, replica=replica)


def from_chunk(chunk: pb.ChatChunk, latency_s: float) -> Delta:
    """The Delta of a ChatChunk; ``latency_s`` is the caller's wait so far, given to a finished choice."""
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


def invalid(details: str) -> RpcAbort:
    """An INVALID_ARGUMENT abort; ``details`` names the field."""
    return RpcAbort(grpc.StatusCode.INVALID_ARGUMENT, details)
