"""Serve a model from this machine: coral's OpenAI-compatible API over the embedded engine, run by uvicorn.

``serve_local`` is what ``coral-serve local`` calls. ``LocalServer`` runs any ASGI app on a socket it binds
itself, in the calling thread (``run``) or in a background thread (``start`` / ``wait_ready`` / ``stop``, or as a
context manager), so tests and benchmarks can start a real server on 127.0.0.1 with port 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from coral.backends.embedded import EmbeddedBackend, EngineConfig
from coral.backends.models import DEFAULT_MODEL
from coral.serving.cluster import LOOPBACK
from coral.serving.openai_api import MAX_BODY_BYTES, build_openai_app

log = logging.getLogger(__name__)

TOKEN_ENV = "CORAL_API_TOKEN"
"""Environment variable holding the bearer token when none is passed."""



def serve_local(
    model: str = DEFAULT_MODEL,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    token_file: str | Path | None = None,
    served_name: str | None = None,
    engine: EngineConfig = EngineConfig(),
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Serve ``model`` at ``http://<host>:<port>/v1`` until interrupted (Ctrl+C or SIGTERM).

    Args:
        model: a packaged model name or a local checkpoint directory.
        host: address to bind; loopback by default, so nothing outside this machine can reach the server.
        port: TCP port; 0 picks a free one (the log line shows which).
        token: bearer token clients must send (see ``resolve_token``); no token means no authentication.
        token_file: a file holding the token instead.
        served_name: the model name clients use; default ``model``.
        engine: limits of the embedded engine.
        max_body_bytes: largest request body; larger ones are refused (413) before they are read.
    """
    _ensure_logging()
    token = resolve_token(token, token_file)
    name = served_name or model
    backend = EmbeddedBackend(model, engine)
    backend.engine()  # the weights load in the engine's thread while the server starts
    app = build_openai_app(backend, {name: model}, token=token, max_body_bytes=max_body_bytes)
    server = LocalServer(app, host, port, log_level="info")
    auth = "bearer token required" if token else "no authentication"
    log.info("coral: serving %s as %r at %s (%s)", model, name, server.base_url, auth)
    if host not in LOOPBACK and not token:
        log.warning(
            "coral: %s is reachable from other machines without a token; set %s or pass token=", host, TOKEN_ENV
        )
    server.run()


def resolve_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token: ``token``, else the content of ``token_file``, else ``$CORAL_API_TOKEN``, else None.

    A token given on the command line is visible to every user of the machine (``ps``, ``/proc/<pid>/cmdline``);
    a file (mode 600) or the environment (``/proc/<pid>/environ`` is private to its user) is not.
    """
    if token is not None and token_file is not None:
        raise ValueError("give a token or a token file, not both")
    if token_file is None:
        return token if token is not None else os.environ.get(TOKEN_ENV) or None
    path = Path(token_file).expanduser()
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"token file {path}: {exc.strerror}") from None
    if not text:
        raise ValueError(f"token file {path} is empty")
    return text


class LocalServer:
    """uvicorn serving ``app`` on a socket bound at construction, so ``port`` is known at once even for port 0.

    Args:
        app: any ASGI app (e.g. from ``build_openai_app``).
        host: address to bind; loopback by default.
        port: TCP port; 0 picks a free one.
        log_level: uvicorn's log level ("info" also logs every request).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning") -> None:
        self.host = host
        self._socket = _bind(host, port)
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The API root clients use, e.g. ``http://127.0.0.1:8000/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def run(self) -> None:
        """Serve in this thread until stopped; in the main thread uvicorn handles Ctrl+C and SIGTERM."""
        try:
            self.server.run(sockets=[self._socket])
        finally:
            self._socket.close()

    def start(self) -> LocalServer:
        """Serve in a background thread; pair with ``wait_ready`` and ``stop``."""
        if self._thread is not None:
            raise RuntimeError("LocalServer.start: already started")
        self._thread = threading.Thread(target=self.run, name=f"coral-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> str:
        """Block until the server accepts requests; returns ``base_url``."""
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if self._thread is None or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.base_url} stopped before it was ready (see its log)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.base_url} not ready after {timeout_s}s")
            time.sleep(0.02)
        return self.base_url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to finish (open requests get a few seconds) and wait for its thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> LocalServer:
        self.start().wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        self.start()
        await asyncio.to_thread(self.wait_ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on (host, port); fails here, with the address named, if it is taken."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = found[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror}") from None
    return sock


def _ensure_logging() -> None:
    """A blocking server entry point shows its INFO lines when the program has not configured logging."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
