"""The embedded engine as a Ray Serve application: OpenAI-compatible HTTP and coral's gRPC, sticky conversations.

Each replica builds one EmbeddedBackend and serves it twice over: HTTP through ``build_openai_app`` as the
deployment's ingress (``/<app>/v1/chat/completions``), and gRPC through Ray Serve's gRPC proxy, which calls the
deployment methods named after the RPCs (``Chat``, ``ChatStream``) with the decoded request. Both run
``ChatServicer`` / the OpenAI app's own logic; this module only adapts them to Ray Serve.

Sticky routing, as Matrix does it: a no-op ``@serve.multiplexed`` loader "loads" each conversation id it sees, so
Ray Serve's router sends every later request carrying that id (HTTP header ``serve_multiplexed_model_id``, gRPC
metadata ``multiplexed_model_id``) to this replica, whose prefix cache holds the conversation. Every answer names
the replica (its Ray Serve unique id), so clients and tests can check it.

A Ray Serve config file names this application by ``import_path: coral.serving.apps:build_embedded_app`` with
``args`` as in ``EmbeddedAppArgs``; the gRPC proxy needs ``grpc_servicer_functions:
[coral.wire.coral_chat_pb2_grpc.add_CoralChatServicer_to_server]`` in ``grpc_options``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import FastAPI
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from coral.backends import models
from coral.backends.base import ChatBackend, ChatRequest, Completion, Delta, stream_chat
from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.serving.grpc_server import ChatServicer
from coral.serving.openai_api import build_openai_app
from coral.wire import coral_chat_pb2 as pb
from coral.wire.codec import RpcAbort

MAX_SESSIONS_PER_REPLICA = 100_000
"""Conversation ids one replica keeps "loaded" for routing; beyond this the least recently used is forgotten."""


@dataclass(frozen=True)
class EmbeddedAppArgs:
    """Arguments of ``build_embedded_app`` (the ``args`` of a Ray Serve config entry).

    Args:
        model: packaged model name or local checkpoint directory, loaded by every replica.
        served_name: the name clients ask for (default: ``model``).
        engine: EngineConfig fields of each replica's engine, e.g. ``{threads: 1, max_sequences: 32}``.
        token: when set, HTTP needs ``Authorization: Bearer <token>`` and gRPC the same ``authorization`` metadata.
        min_replicas: fewest replicas the autoscaler keeps.
        max_replicas: most replicas (default: ``min_replicas``).
        target_ongoing_requests: requests per replica the autoscaler aims at (default: 80% of
            ``max_ongoing_requests``, as Matrix).
        max_ongoing_requests: requests one replica takes at once; more wait in the router. Large, so that the turns
            of a conversation can still go to the replica that holds it.
        num_cpus: CPUs Ray reserves for each replica.
    """

    model: str = models.DEFAULT_MODEL
    served_name: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    token: str | None = None
    min_replicas: int = 1
    max_replicas: int | None = None
    target_ongoing_requests: int | None = None
    max_ongoing_requests: int = 64
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        try:  # fail at deploy time, naming the field, not in every replica
            EngineConfig(**self.engine)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"EmbeddedAppArgs.engine: {exc}") from None
        if self.min_replicas < 0 or (self.max_replicas is not None and self.max_replicas < max(self.min_replicas, 1)):
            raise ValueError(
                f"EmbeddedAppArgs: need 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                f"got {self.min_replicas} and {self.max_replicas}"
            )
        if self.max_ongoing_requests < 1:
            raise ValueError(f"EmbeddedAppArgs.max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")

    @classmethod
    def parse(cls, args: dict[str, Any]) -> EmbeddedAppArgs:
        """From a config's ``args``; an unknown key fails with the closest known keys suggested."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in args:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"build_embedded_app: unknown argument {key!r}{hint} (known: {', '.join(known)})")
        return cls(**args)

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve options: autoscaling between the replica bounds, the request limit, the CPUs per replica."""
        max_replicas = self.max_replicas if self.max_replicas is not None else max(self.min_replicas, 1)
        target = self.target_ongoing_requests or max(int(0.8 * self.max_ongoing_requests), 1)
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus},
        }


def build_embedded_app(args: dict[str, Any]) -> serve.Application:
    """The embedded engine as a Ray Serve application (``import_path: coral.serving.apps:build_embedded_app``)."""
    parsed = EmbeddedAppArgs.parse(args)
    # @serve.deployment made the class a Deployment; Ray's annotations still give the class
    deployment = cast(serve.Deployment, EmbeddedDeployment).options(**parsed.deployment_options())
    return deployment.bind(parsed.model, parsed.served_name or parsed.model, parsed.engine, parsed.token)


class _StickySessions:
    """A ChatBackend that first "loads" each request's conversation id on this replica, then lets the engine answer.

    The id is the one Ray Serve routed on (``serve.get_multiplexed_model_id()``), else the request's session id.
    """

    def __init__(self, backend: ChatBackend, load_session: Callable[[str], Awaitable[object]]) -> None:
        self.backend = backend
        self._load_session = load_session

    async def _touch(self, session_id: str | None) -> None:
        routed = serve.get_multiplexed_model_id() or session_id
        if routed:
            await self._load_session(routed)

    async def chat(self, request: ChatRequest) -> list[Completion]:
        await self._touch(request.session_id)
        return await self.backend.chat(request)

    async def chat_stream(self, request: ChatRequest) -> AsyncIterator[Delta]:
        await self._touch(request.session_id)
        # An async generator, closed below so that a cancelled call frees the engine at once.
        pieces = stream_chat(self.backend, request)
        try:
            async for delta in pieces:
                yield delta
        finally:
            await pieces.aclose()

    async def end_session(self, session_id: str) -> None:
        await self.backend.end_session(session_id)

    async def aclose(self) -> None:
        await self.backend.aclose()


@serve.deployment(name="EmbeddedDeployment")
@serve.ingress()
class EmbeddedDeployment:
    """One replica: an embedded engine answering HTTP (OpenAI API) and gRPC (CoralChat) requests."""

    def __init__(self, model: str, served_name: str, engine: dict[str, Any], token: str | None) -> None:
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.served = {served_name: model}
        self.token = token
        embedded = EmbeddedBackend(model, EngineConfig(**engine))
        embedded.engine()  # start loading the model now, in the engine's thread, not on the first request
        self.backend = _StickySessions(embedded, self.load_session)
        self.grpc = ChatServicer(self.backend, model_names=self.served, replica=self.replica, token=token)

    def __serve_build_asgi_app__(self) -> FastAPI:  # Ray Serve's hook: the ingress app, per replica
        return build_openai_app(self.backend, self.served, token=self.token, replica=self.replica)

    @serve.multiplexed(max_num_models_per_replica=MAX_SESSIONS_PER_REPLICA)
    async def load_session(self, session_id: str) -> str:
        """Nothing to load: having "loaded" the id is what makes Ray Serve route the conversation here."""
        return session_id

    async def Chat(self, request: pb.ChatRequest, grpc_context: RayServegRPCContext) -> pb.ChatResponse:
        """CoralChat.Chat through Ray Serve's gRPC proxy (which passes ``grpc_context`` by that name)."""
        try:
            return await self.grpc.respond(request, grpc_context.invocation_metadata())
        except RpcAbort as abort:
            _set_status(grpc_context, abort)
            raise

    async def ChatStream(
        self, request: pb.ChatRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[pb.ChatChunk]:
        """CoralChat.ChatStream through Ray Serve's gRPC proxy."""
        try:
            async for chunk in self.grpc.stream(request, grpc_context.invocation_metadata()):
                yield chunk
        except RpcAbort as abort:
            _set_status(grpc_context, abort)
            raise


def _set_status(grpc_context: RayServegRPCContext, abort: RpcAbort) -> None:
    """Ray Serve answers a failed call with the status set on its context before the exception is raised."""
    grpc_context.set_code(abort.code)
    grpc_context.set_details(abort.details)
