"""A cluster's state folder: where its head runs (``head.json``), what it started (``jobs.json``), its token.

Every other part of ``coral.serving.cluster`` reads and writes the cluster through these two types, so a stale
or half-written folder is handled in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
import secrets
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coral.atomic import write_atomic

HEAD_FILE, JOBS_FILE, DEPLOYMENT_FILE = "head.json", "jobs.json", "deployment.yaml"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ClusterError(RuntimeError):
    """A cluster could not be started, found or stopped; the message says what to look at."""


@dataclass
class HeadInfo:
    """Where a cluster's head runs and how it was started (the content of ``head.json``).

    Args:
        host: address clients and workers use to reach the head.
        gcs_port: Ray's GCS port (``ray start --address host:gcs_port``).
        dashboard_port: Ray dashboard (REST API for Serve deploy and status).
        http_port: Ray Serve HTTP proxy port.
        grpc_port: Ray Serve gRPC proxy port.
        http_host: address the Serve HTTP proxy binds.
        proxy_location: Ray Serve proxy placement, ``HeadOnly`` or ``EveryNode``.
        launcher: ``local`` or ``slurm``.
        pid: the head's ``ray start --block`` process (local).
        slurm_job_id: the head's Slurm job (Slurm).
        options: the launcher options the cluster was started with (reused when workers are added).
        token_file: the cluster's Ray authentication token (every Ray process and dashboard call needs it).
    """

    host: str
    gcs_port: int
    dashboard_port: int
    http_port: int
    grpc_port: int
    http_host: str
    proxy_location: str
    launcher: str
    pid: int | None = None
    slurm_job_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    token_file: str | None = None

    @property
    def address(self) -> str:
        """What ``ray start --address`` and ``ray.init(address=...)`` take."""
        return f"{self.host}:{self.gcs_port}"

    @property
    def ray_cli_env(self) -> str:
        """What the ``ray`` CLI needs in its environment to reach this cluster.

        The token, and on loopback the switch that stops it swapping 127.0.0.1 for the machine's address (see
        ``ray_processes._LOOPBACK_RAY``).
        """
        env = f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={self.token_file}"
        return f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 {env}" if self.host in LOOPBACK else env

    @property
    def dashboard_url(self) -> str:
        """The dashboard's base URL (REST API and web UI)."""
        return f"http://{self.host}:{self.dashboard_port}"

    def dashboard(self, path: str, *, method: str = "GET", body: Any = None, timeout_s: float = 10.0) -> Any:
        """Call the dashboard's REST API with the cluster's token; the decoded JSON answer (None when empty).

        Raises ``urllib.error.HTTPError`` (with Ray's message as body) or ``OSError`` when it cannot be reached.
        """
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            headers["Authorization"] = f"Bearer {Path(self.token_file).read_text().strip()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.dashboard_url}{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """True when both the GCS port and the dashboard answer (a stale head.json fails this)."""
        try:
            with socket.create_connection((self.host, self.gcs_port), timeout=timeout_s):
                pass
            self.dashboard("/api/ray/version", timeout_s=timeout_s)
            return True
        except (OSError, ValueError):
            return False


@dataclass(frozen=True)
class ClusterState:
    """The state folder of one cluster."""

    folder: Path
    cluster_id: str

    @classmethod
    def locate(cls, cluster_id: str | None = None, coral_dir: str | Path | None = None) -> ClusterState:
        """Resolve the folder from arguments, then ``$CORAL_CLUSTER_ID`` / ``$CORAL_DIR``, then defaults."""
        cluster_id = cluster_id or os.environ.get("CORAL_CLUSTER_ID") or f"{getpass.getuser()}_cluster"
        root = Path(coral_dir or os.environ.get("CORAL_DIR") or "~/.coral").expanduser().resolve()
        return cls(root / cluster_id, cluster_id)

    @property
    def head_file(self) -> Path:
        """``head.json``: the running head (``HeadInfo``)."""
        return self.folder / HEAD_FILE

    @property
    def jobs_file(self) -> Path:
        """``jobs.json``: every process or Slurm job this cluster started."""
        return self.folder / JOBS_FILE

    @property
    def deployment_file(self) -> Path:
        """``deployment.yaml``: the Ray Serve config of the deployed applications."""
        return self.folder / DEPLOYMENT_FILE

    @property
    def logs(self) -> Path:
        """The local Ray processes' logs (kept when the cluster stops)."""
        return self.folder / "logs"

    @property
    def token_file(self) -> Path:
        """The cluster's Ray authentication token."""
        return self.folder / "ray_token"

    def new_token(self) -> Path:
        """A fresh Ray authentication token for a new head, readable by this user only.

        Set explicitly so a cluster never depends on whether some earlier ``ray.init()`` left a token in
        ``~/.ray``: Ray turns token authentication on by itself when it finds one.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.token_file.unlink(missing_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))  # a secret, so not drawn from a seeded generator
        return self.token_file

    def read_head(self) -> HeadInfo | None:
        """The recorded head, None when there is none; an unreadable ``head.json`` is an error."""
        if not self.head_file.exists():
            return None
        try:
            return HeadInfo(**json.loads(self.head_file.read_text()))
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{self.head_file}: unreadable ({exc}); run stop_cluster to clear it") from None

    def require_head(self) -> HeadInfo:
        """The recorded head, or an error saying how to start one."""
        head = self.read_head()
        if head is None:
            raise ClusterError(f"no cluster {self.cluster_id!r} under {self.folder.parent} "
                               "(start one with `coral-serve start_cluster`)")
        return head

    def write_head(self, head: HeadInfo) -> None:
        """Record the head (atomically: the CLI may be polling for it)."""
        write_json(self.head_file, dataclasses.asdict(head))

    def read_jobs(self) -> list[dict[str, Any]]:
        """What this cluster started: one record per local process or Slurm job."""
        return json.loads(self.jobs_file.read_text()) if self.jobs_file.exists() else []

    def add_jobs(self, records: list[dict[str, Any]]) -> None:
        """Record newly started processes or jobs, so stopping the cluster finds them."""
        write_json(self.jobs_file, self.read_jobs() + records)

    def clear(self) -> None:
        """Forget the cluster (logs stay for post-mortems)."""
        for path in (self.head_file, self.jobs_file, self.deployment_file, self.token_file):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise commands on one cluster (two `start_cluster` calls must not both start a head)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader (the CLI polling for head.json) never sees half a file."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))

