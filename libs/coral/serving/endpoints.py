"""Where a served model lives: an endpoint (an application name, an HTTP URL or a gRPC address) -> a ChatBackend.

An endpoint is what the command line's ``*app_name`` options hold (the reference's spelling; see the README's
table of option names): despite the name, a URL or a ``grpc://`` address is just as welcome as an application.

- ``http://...`` / ``https://...``: an OpenAI-compatible API root (``.../v1``); the key comes from
  ``$OPENAI_API_KEY``, else ``$CORAL_API_TOKEN``.
- ``grpc://host:port[/app]``: coral's gRPC service, standalone or through Ray Serve's gRPC proxy (``app``).
- anything else: an application deployed on a coral cluster, found in its state folder (``head.json`` for the
  proxies' address, ``deployment.yaml`` for the application's protocol, model name and token).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coral.backends.base import ChatBackend
from coral.backends.retry import RetryPolicy
from coral.serving.cluster import ClusterState
from coral.serving.deploy import load_deployment

KEY_ENVS = ("OPENAI_API_KEY", "CORAL_API_TOKEN")


class UnknownEndpoint(LookupError):
    """A name that is neither a URL nor a deployed application."""


@dataclass(frozen=True)
class Endpoint:
    """How to reach one served model.

    Args:
        protocol: ``http`` or ``grpc``.
        address: the API root URL (HTTP) or ``host:port`` (gRPC).
        app_name: the Ray Serve application (gRPC metadata ``application``); None for a standalone server.
        model: the model name to send (None: the server's default).
        token: the bearer token to send (None: none).
    """

    protocol: str
    address: str
    app_name: str | None = None
    model: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"Endpoint({self.protocol!r}, {self.address!r}, app_name={self.app_name!r}, model={self.model!r})"


def resolve(endpoint: str, *, cluster_id: str | None = None, coral_dir: str | Path | None = None) -> Endpoint:
    """How to reach ``endpoint``: a URL, a ``grpc://`` address, or an application name on a cluster."""
    if endpoint.startswith(("http://", "https://")):
        return Endpoint("http", endpoint, token=_env_token())
    if endpoint.startswith("grpc://"):
        target, _, app = endpoint.removeprefix("grpc://").partition("/")
        return Endpoint("grpc", target, app_name=app or None, token=os.environ.get("CORAL_API_TOKEN"))
    return _resolve_application(endpoint, ClusterState.locate(cluster_id, coral_dir))


def _env_token() -> str | None:
    return next((os.environ[name] for name in KEY_ENVS if os.environ.get(name)), None)


def _resolve_application(name: str, state: ClusterState) -> Endpoint:
    apps = {app.name: app for app in load_deployment(state.deployment_file)}
    head = state.read_head()
    if name not in apps or head is None:
        known = ", ".join(sorted(apps)) or "none"
        raise UnknownEndpoint(f"{name!r} is not a URL (http://..., grpc://host:port/app) nor an application "
                              f"deployed on cluster {state.cluster_id!r} (state folder {state.folder}; "
                              f"deployed: {known})")
    app = apps[name]
    if app.use_grpc:
        return Endpoint("grpc", f"{head.host}:{head.grpc_port}", app_name=name, model=app.served_name,
                        token=app.token)
    return Endpoint("http", f"http://{head.host}:{head.http_port}/{name}/v1", app_name=name,
                    model=app.served_name, token=app.token)


def backend_for(endpoint: str, *, model: str | None = None, timeout_s: float = 600.0,
                retry: RetryPolicy | None = None, cluster_id: str | None = None,
                coral_dir: str | Path | None = None) -> ChatBackend:
    """A ChatBackend talking to ``endpoint`` (see :func:`resolve`); ``model`` overrides the served name."""
    found = resolve(endpoint, cluster_id=cluster_id, coral_dir=coral_dir)
    options: dict[str, Any] = {"timeout_s": timeout_s, **({"retry": retry} if retry is not None else {})}
    if found.protocol == "grpc":
        from coral.backends.grpc_client import GrpcBackend

        return GrpcBackend(found.address, app_name=found.app_name, model=model or found.model,
                           token=found.token, **options)
    from coral.backends.http import OpenAIHTTPBackend

    return OpenAIHTTPBackend(found.address, model=model or found.model, api_key=found.token, **options)
