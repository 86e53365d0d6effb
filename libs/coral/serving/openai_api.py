"""An OpenAI-compatible HTTP API in front of any ChatBackend (in practice the embedded engine).

Thin layers (STYLE 6): the routes only move data; ``ChatCompletionRequest`` validates a request and turns itself
into ``SamplingParams``; the backend does the work. Every error is OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``) so OpenAI clients report it properly.

The app keeps all its state in its closure, so the same object can be served by uvicorn or used as a Ray Serve
ingress. Each answer names the replica that produced it (top-level ``replica`` and the ``x-coral-replica``
header), which lets clients and tests check sticky routing; the conversation id arrives in Ray Serve's
``serve_multiplexed_model_id`` header and reaches the backend as ``session_id``.

Hostile or careless clients are bounded: a request body over ``max_body_bytes`` is refused with 413 before it is
read (one 50 MB body used to grow the server by 7 GB), a request the model can never answer (prompt past the
context) is a 400, not a 500 that clients retry, and a generation stops when its client goes away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coral.backends.base import MAX_N, BackendError, ChatBackend, ChatRequest, Completion, Delta, stream_chat
from coral.backends.http import REPLICA_HEADER, SESSION_HEADER
from coral.sampling import SamplingParams

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 2**20
"""Default largest request body: a full 8k-token conversation is ~40 KB of JSON, so 4 MiB leaves ample room."""


class APIError(Exception):
    """An error answer: HTTP status plus OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def response(self) -> JSONResponse:
        """The error as OpenAI's JSON error body with its status (401s name the Bearer scheme)."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# ---------------------------------------------------------------------------------------------- request schema
class TextPart(BaseModel):
    """A text part of a message's content (OpenAI's list form); other part types are not served."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of the conversation; list content is joined into one text."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_message(self) -> dict[str, str]:
        """The message as coral's plain ``{"role", "content"}`` dict."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": self.role, "content": text}


class StreamOptions(BaseModel):
    """``include_usage``: a last chunk carries the token counts."""

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The served subset of OpenAI's chat request. Unknown fields are ignored, as OpenAI clients send many.

    Defaults follow OpenAI (temperature 1, top_p 1); without ``max_tokens`` / ``max_completion_tokens`` the
    SamplingParams default applies. Value ranges are SamplingParams' own, checked when converting.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = None
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self) -> SamplingParams:
        """The request's sampling parameters; an out-of-range value is a 400 naming the field."""
        fields: dict[str, Any] = {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "seed": self.seed,
            "stop": (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ()),
            "ignore_eos": self.ignore_eos,
        }
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        try:
            return SamplingParams(**fields)
        except ValueError as exc:
            field = re.search(r"SamplingParams\.(\w+)", str(exc))
            raise APIError(400, str(exc), "invalid_request_error", "invalid_value", field and field.group(1)) from None

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages as coral's plain dicts."""
        return [message.as_message() for message in self.messages]


# ---------------------------------------------------------------------------------------------- the app
def build_openai_app(
    backend: ChatBackend,
    model_names: Sequence[str] | Mapping[str, str],
    *,
    token: str | None = None,
    replica: str | Callable[[], str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An OpenAI-compatible app serving ``backend``.

    Args:
        backend: answers the requests.
        model_names: the names clients may ask for. A list passes the name to the backend as its model; a mapping
            {served name: backend model} serves a model under another name.
        token: when set, every ``/v1`` route needs ``Authorization: Bearer <token>``; ``/health`` never does (it
            tells nothing but "ok"). There are no ``/docs``, ``/redoc`` or ``/openapi.json`` routes to leak the API.
        replica: this replica's name in answers, or a function giving it per request (e.g. Ray Serve's replica id);
            default: ``<hostname>:<pid>``.
        max_body_bytes: largest request body; a larger one is answered 413 before it is read.
    """
    served = dict(model_names) if isinstance(model_names, Mapping) else {name: name for name in model_names}
    if not served:
        raise ValueError("build_openai_app: model_names is empty; name at least one model to serve")
    default_replica = f"{socket.gethostname()}:{os.getpid()}"
    created = int(time.time())

    def replica_name() -> str:
        if callable(replica):
            return replica()
        return replica or default_replica

    def require_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            problem = "missing or wrong bearer token (Authorization: Bearer <token>)"
            raise APIError(401, problem, "authentication_error", "invalid_api_key")

    app = FastAPI(title="coral OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        data = [{"id": name, "object": "model", "created": created, "owned_by": "coral"} for name in served]
        return {"object": "list", "data": data}

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.model not in served:
            known = ", ".join(served)
            problem = f"The model `{body.model}` does not exist (served: {known})"
            raise APIError(404, problem, "invalid_request_error", "model_not_found", "model")
        chat = ChatRequest(
            body.chat_messages(), body.sampling(), served[body.model], body.n, request.headers.get(SESSION_HEADER)
        )
        answer = _AnswerShape(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, replica_name())
        headers = {REPLICA_HEADER: answer.replica}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = await _stream_events(stream_chat(backend, chat), answer, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        try:
            completions = await _unless_disconnected(request, backend.chat(chat))
        except _ClientGone:
            log.info("client left before its answer; generation cancelled")
            return Response(status_code=499)  # nginx's "client closed request": nobody reads it
        except BackendError as exc:
            raise _backend_failure(exc) from None
        return JSONResponse(answer.completion(completions), headers=headers)

    app.include_router(v1)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves as OpenAI-shaped JSON; validation errors are 400s naming the field."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems, param = [], None
        for error in exc.errors():
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
            param = param or where or None
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
        problem = "invalid request: " + "; ".join(problems)
        return APIError(400, problem, "invalid_request_error", "invalid_value", param).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error serving %s", request.url.path, exc_info=exc)
        problem = f"internal error: {type(exc).__name__}: {exc}"
        return APIError(500, problem, "server_error", "internal_error").response()


class _BodyLimit:
    """Answers 413 to a request body over ``limit`` bytes without keeping any of it.

    It answers at once when Content-Length says so, else as soon as the bytes received pass the limit (chunked
    uploads). The rest of the body is read and
    dropped before answering, so the client sees the 413 rather than a connection reset (which it would retry),
    unless it asked ``Expect: 100-continue`` (curl does for large bodies): then it never sends the body at all.
    Recent FastAPI has ``max_body_size``; Ray Serve pins no FastAPI version, so this does not rely on it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await _drop_body(receive)
            await self._too_large().response()(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # reaches the app's HTTPException handler, as an OpenAI-shaped 413
                if message.get("more_body"):
                    await _drop_body(receive)
                raise HTTPException(413, self._too_large().message)
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> APIError:
        problem = f"request body larger than {self.limit} bytes"
        return APIError(413, problem, "invalid_request_error", "request_too_large")


async def _drop_body(receive: Receive) -> None:
    """Read the rest of a request body, keeping none of it (the server hands it over in small pieces)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            return


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, work: Awaitable[list[Completion]]) -> list[Completion]:
    """Await ``work``, cancelling it (and so the engine's sequences) if the client disconnects first."""

    async def disconnected() -> None:
        try:
            while (await request.receive())["type"] != "http.disconnect":  # the body is read: only the end can come
                pass
        except Exception:  # a server that cannot report the end: never claim it came
            await asyncio.Event().wait()

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task not in done:
        raise _ClientGone
    return task.result()


def _backend_failure(exc: BackendError) -> APIError:
    """503 when trying again may help; a client error keeps its status, code and field; anything else is a 500.

    A client error is a proxied one, or a request the model can never answer.
    """
    if exc.retryable:
        return APIError(503, str(exc), "server_error", "backend_unavailable")
    status = getattr(exc, "status", None)
    if isinstance(status, int) and 400 <= status < 500:
        code, param = getattr(exc, "code", None), getattr(exc, "param", None)
        return APIError(status, str(exc), "invalid_request_error", code, param)
    return APIError(500, str(exc), "server_error", "backend_error")


@dataclass(frozen=True)
class _AnswerShape:
    """Builds the OpenAI JSON of one answer: the whole chat.completion, or its stream of chunks."""

    id: str
    created: int
    model: str
    replica: str

    def completion(self, completions: list[Completion]) -> dict[str, Any]:
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "completion_tokens": completion.completion_tokens,  # coral extension: exact per-choice usage
            }
            for index, completion in enumerate(completions)
        ]
        usage = _usage(completions)
        return {**self._head("chat.completion"), "choices": choices, "usage": usage, "replica": self.replica}

    def chunk(self, index: int, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        return _sse({**self._head("chat.completion.chunk"), "choices": [choice], "replica": self.replica})

    def usage_chunk(self, completions: list[Completion]) -> str:
        usage = _usage(completions)
        return _sse({**self._head("chat.completion.chunk"), "choices": [], "usage": usage, "replica": self.replica})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def _usage(completions: list[Completion]) -> dict[str, Any]:
    """Request usage: the prompt (shared by all choices) counted once, completion tokens summed."""
    prompt = completions[0].prompt_tokens if completions else 0
    generated = sum(completion.completion_tokens for completion in completions)
    cached = completions[0].cached_prompt_tokens if completions else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _stream_events(
    pieces: AsyncGenerator[Delta, None], answer: _AnswerShape, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events for a request's stream of ``pieces``, ending with ``data: [DONE]``.

    The first piece is awaited before the response starts, so a request that fails at once gets a proper HTTP
    status; a failure later in the stream can only be reported as an error event.
    """
    try:
        first = await anext(pieces, None)
    except BackendError as exc:
        await pieces.aclose()
        raise _backend_failure(exc) from None

    async def events() -> AsyncIterator[str]:
        started: set[int] = set()
        finished: dict[int, Completion] = {}
        piece = first
        try:
            while piece is not None:
                for event in _piece_events(answer, piece, started, finished):
                    yield event
                piece = await anext(pieces, None)
            if include_usage:
                yield answer.usage_chunk([finished[index] for index in sorted(finished)])
        except BackendError as exc:
            failure = _backend_failure(exc)
            error = {"message": failure.message, "type": failure.type, "param": None, "code": failure.code}
            yield _sse({"error": error})
        finally:
            await pieces.aclose()  # client gone, or failed: the backend releases what it holds
        yield "data: [DONE]\n\n"

    return events()


def _piece_events(answer: _AnswerShape, piece: Delta, started: set[int], finished: dict[int, Completion]) -> list[str]:
    """Chunks for one streamed piece: the role with a choice's first text, then text, then its finish reason."""
    events = []
    if piece.text or piece.index not in started:
        delta = {"content": piece.text}
        if piece.index not in started:
            delta = {"role": "assistant", **delta}
            started.add(piece.index)
        events.append(answer.chunk(piece.index, delta))
    if piece.completion is not None:
        finished[piece.index] = piece.completion
        events.append(answer.chunk(piece.index, {}, piece.completion.finish_reason))
    return events
