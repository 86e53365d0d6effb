"""Ray's processes: one ``ray start --block`` per node, started in its own session and stopped by session.

Both launchers build their nodes from these pieces: locally each node is a child of this process, on Slurm the
body of a job. A node reached on loopback runs a ``ray`` that keeps every Ray server on loopback
(``_LOOPBACK_RAY``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from coral.serving.cluster.state import LOOPBACK, ClusterError, HeadInfo

NODE_LABEL = "coral_node"
"""Ray node label naming each worker, so a start waits for exactly the nodes it launched."""


def free_ports(count: int, host: str = "") -> list[int]:
    """``count`` distinct ports free right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (the jobs must run the same Ray as the client)."""
    sibling = Path(sys.executable).with_name("ray")
    found = str(sibling) if sibling.exists() else shutil.which("ray")
    if not found:
        raise ClusterError("the `ray` command is missing: pip install 'ray[serve]'")
    return found


_LOOPBACK_RAY = """
import os, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every process Ray starts takes loopback as this node's IP
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True  # this one may still join a head
services.resolve_ip_for_localhost = lambda host: host  # and keeps a loopback address as given
from ray.scripts.scripts import main
sys.exit(main())
"""
"""The ``ray`` CLI for a node on loopback. ``ray start`` swaps a loopback ``--node-ip-address`` or ``--address``
for this machine's routable address (so that other machines could join), and Ray's servers then listen on every
interface; Ray binds GCS, raylets, agents, workers and the client server to loopback only when the node's address
is loopback. So a local cluster's nodes keep 127.0.0.1: in the ``ray start`` process by patching that swap, in
the processes it starts (dashboard, agents, Serve, replicas, which connect to the GCS by address) through Ray's
switch that makes loopback the node address (meant for single-machine Ray on macOS and Windows)."""


def _ray_command(host: str) -> list[str]:
    """How to run ``ray`` for a node reached at ``host``: on loopback, the variant that stays there."""
    return [sys.executable, "-c", _LOOPBACK_RAY] if host in LOOPBACK else [_ray_executable()]


def _node_port_flags() -> list[str]:
    """Per-node agent ports, chosen free, so several nodes (or clusters) can share one host."""
    listen, grpc, runtime_env, metrics = free_ports(4)
    return ["--dashboard-agent-listen-port", str(listen), "--dashboard-agent-grpc-port", str(grpc),
            "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]


def _resource_flags(num_cpus: float | None, num_gpus: float | None) -> list[str]:
    flags = []
    if num_cpus is not None:
        flags += ["--num-cpus", str(int(num_cpus))]
    if num_gpus is not None:
        flags += ["--num-gpus", str(int(num_gpus))]
    return flags


def spawn(command: list[str], log: Path, token_file: str) -> subprocess.Popen:
    """Start a Ray process in its own session (so it and all it spawns can be stopped by PID) with the token."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file)
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def start_head_process(host: str, dashboard_host: str, num_cpus: float | None, num_gpus: float | None,
                        log: Path, http_host: str, proxy_location: str, launcher: str,
                        options: dict[str, Any], token_file: str) -> tuple[subprocess.Popen, HeadInfo]:
    """``ray start --head --block`` on free ports; returns the process and the head's description."""
    gcs, dashboard, client, http, grpc = free_ports(5)
    command = [*_ray_command(host), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", host, "--port", str(gcs), "--ray-client-server-port", str(client),
               "--dashboard-host", dashboard_host, "--dashboard-port", str(dashboard),
               *_resource_flags(num_cpus, num_gpus), *_node_port_flags()]
    process = spawn(command, log, token_file)
    head = HeadInfo(host=host, gcs_port=gcs, dashboard_port=dashboard, http_port=http, grpc_port=grpc,
                    http_host=http_host, proxy_location=proxy_location, launcher=launcher, pid=process.pid,
                    options=options, token_file=token_file)
    return process, head


def wait_for_head(head: HeadInfo, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Wait until the head answers; fail with its log's end when it exits or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while not head.reachable():
        if process.poll() is not None:
            raise ClusterError(f"the Ray head exited with code {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the Ray head did not answer within {timeout_s:.0f}s; log {log}:\n{tail(log)}")
        time.sleep(0.5)


def worker_command(address: str, num_cpus: float | None, num_gpus: float | None, label: str) -> list[str]:
    """``ray start --block`` joining ``address``; the node label lets the caller see this very node join."""
    host = address.rsplit(":", 1)[0]
    return [*_ray_command(host), "start", "--block", "--disable-usage-stats", "--address", address,
            "--labels", f"{NODE_LABEL}={label}", *_resource_flags(num_cpus, num_gpus), *_node_port_flags()]


def new_labels(count: int) -> list[str]:
    """Fresh node labels, one per worker to start."""
    return [f"w{uuid.uuid4().hex[:12]}" for _ in range(count)]


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def alive_nodes(head: HeadInfo, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The cluster's alive Ray nodes, from the dashboard's state API."""
    rows = head.dashboard("/api/v0/nodes?limit=10000&detail=true", timeout_s=timeout_s)["data"]["result"]["result"]
    return [row for row in rows if row.get("state") == "ALIVE"]


def wait_for_workers(head: HeadInfo, labels: list[str], timeout_s: float, why: Callable[[], str]) -> None:
    """Wait until every node labelled with one of ``labels`` is alive in the cluster."""
    deadline = time.monotonic() + timeout_s
    joined: set[str] = set()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            joined = {node.get("labels", {}).get(NODE_LABEL) for node in alive_nodes(head)} & set(labels)
            if len(joined) == len(labels):
                return
        time.sleep(1.0)
    raise ClusterError(f"{len(joined)} of {len(labels)} new workers joined within {timeout_s:.0f}s; {why()}")


def session_processes(sid: int) -> list[psutil.Process]:
    """Processes of session ``sid``: a local node's ``ray start`` and everything Ray spawned for it."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid:
                found.append(process)
    return found


def kill_session(sid: int) -> None:
    """SIGKILL whatever is left of session ``sid`` and wait for it to go."""
    leftovers = session_processes(sid)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(leftovers, timeout=10)
