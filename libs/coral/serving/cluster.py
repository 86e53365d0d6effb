"""A Ray cluster for serving, on this machine or on Slurm, remembered in a small state folder.

State lives in ``<coral_dir>/<cluster_id>/`` (``coral_dir``: argument, else ``$CORAL_DIR``, else ``~/.coral``;
``cluster_id``: argument, else ``$CORAL_CLUSTER_ID``, else ``<user>_cluster``):

- ``head.json``: where the head is (host, GCS/dashboard/Serve ports) and how it was started;
- ``jobs.json``: every process (local PIDs) or Slurm job this cluster started, so stopping it touches
  nothing else on the machine;
- ``deployment.yaml``: the Ray Serve config of the deployed applications (``coral.serving.deploy``);
- ``logs/`` and ``submitit/``: the Ray processes' output and the Slurm jobs' logs.

Each Ray node is one ``ray start --block`` process: locally in its own session (so the node and every
process it spawns can be found and stopped by PID), on Slurm as the body of a submitit job (so ``scancel``
stops it). Ray Serve itself starts with the first deployment: its HTTP and gRPC options are part of the
deploy config (see ``coral.serving.deploy``), using the ports chosen here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HEAD_FILE, JOBS_FILE, DEPLOYMENT_FILE = "head.json", "jobs.json", "deployment.yaml"
NODE_LABEL = "coral_node"
"""Ray node label naming each worker, so a start waits for exactly the nodes it launched."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ClusterError(RuntimeError):
    """A cluster could not be started, found or stopped; the message says what to look at."""


# ------------------------------------------------------------------------------------------------ state files


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
        """What the ``ray`` CLI needs in its environment to reach this cluster: the token, and on loopback the
        switch that stops it swapping 127.0.0.1 for the machine's address (see ``_LOOPBACK_RAY``)."""
        env = f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={self.token_file}"
        return f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 {env}" if self.host in LOOPBACK else env

    @property
    def dashboard_url(self) -> str:
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
        return self.folder / HEAD_FILE

    @property
    def jobs_file(self) -> Path:
        return self.folder / JOBS_FILE

    @property
    def deployment_file(self) -> Path:
        return self.folder / DEPLOYMENT_FILE

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def token_file(self) -> Path:
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
        _write_json(self.head_file, dataclasses.asdict(head))

    def read_jobs(self) -> list[dict[str, Any]]:
        return json.loads(self.jobs_file.read_text()) if self.jobs_file.exists() else []

    def add_jobs(self, records: list[dict[str, Any]]) -> None:
        _write_json(self.jobs_file, self.read_jobs() + records)

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


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader (the CLI polling for head.json) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- ray processes


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


def _spawn(command: list[str], log: Path, token_file: str) -> subprocess.Popen:
    """Start a Ray process in its own session (so it and all it spawns can be stopped by PID) with the token."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file)
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def _start_head_process(host: str, dashboard_host: str, num_cpus: float | None, num_gpus: float | None,
                        log: Path, http_host: str, proxy_location: str, launcher: str,
                        options: dict[str, Any], token_file: str) -> tuple[subprocess.Popen, HeadInfo]:
    """``ray start --head --block`` on free ports; returns the process and the head's description."""
    gcs, dashboard, client, http, grpc = free_ports(5)
    command = [*_ray_command(host), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", host, "--port", str(gcs), "--ray-client-server-port", str(client),
               "--dashboard-host", dashboard_host, "--dashboard-port", str(dashboard),
               *_resource_flags(num_cpus, num_gpus), *_node_port_flags()]
    process = _spawn(command, log, token_file)
    head = HeadInfo(host=host, gcs_port=gcs, dashboard_port=dashboard, http_port=http, grpc_port=grpc,
                    http_host=http_host, proxy_location=proxy_location, launcher=launcher, pid=process.pid,
                    options=options, token_file=token_file)
    return process, head


def _wait_for_head(head: HeadInfo, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not head.reachable():
        if process.poll() is not None:
            raise ClusterError(f"the Ray head exited with code {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the Ray head did not answer within {timeout_s:.0f}s; log {log}:\n{_tail(log)}")
        time.sleep(0.5)


def _worker_command(address: str, num_cpus: float | None, num_gpus: float | None, label: str) -> list[str]:
    """``ray start --block`` joining ``address``; the node label lets the caller see this very node join."""
    host = address.rsplit(":", 1)[0]
    return [*_ray_command(host), "start", "--block", "--disable-usage-stats", "--address", address,
            "--labels", f"{NODE_LABEL}={label}", *_resource_flags(num_cpus, num_gpus), *_node_port_flags()]


def _new_labels(count: int) -> list[str]:
    return [f"w{uuid.uuid4().hex[:12]}" for _ in range(count)]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def alive_nodes(head: HeadInfo, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The cluster's alive Ray nodes, from the dashboard's state API."""
    rows = head.dashboard("/api/v0/nodes?limit=10000&detail=true", timeout_s=timeout_s)["data"]["result"]["result"]
    return [row for row in rows if row.get("state") == "ALIVE"]


def _wait_for_workers(head: HeadInfo, labels: list[str], timeout_s: float, why: Callable[[], str]) -> None:
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


# --------------------------------------------------------------------------------------------- local launcher


@dataclass(frozen=True)
class LocalOptions:
    """How a cluster on this machine is laid out (``--local '{...}'``).

    Args:
        cpus_per_worker: CPUs each worker node offers Ray (replicas of the embedded engine take 1 each).
        gpus_per_worker: GPUs each worker node offers Ray.
        head_cpus: CPUs the head offers (None: 0 when workers are added, so replicas run on workers;
            otherwise every core).
        host: address clients use to reach the head; the dashboard binds it. 127.0.0.1 (the default) keeps every
            Ray server on loopback (``_LOOPBACK_RAY``) but two that Ray 2.60 binds to all interfaces whatever it is
            told: Serve's gRPC proxy and each replica's inter-deployment gRPC server.
        http_host: address the Serve HTTP proxy binds.
        proxy_location: ``HeadOnly``: one proxy; on one host every node would otherwise claim the same port.
    """

    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    head_cpus: float | None = None
    host: str = "127.0.0.1"
    http_host: str = "127.0.0.1"
    proxy_location: str = "HeadOnly"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LocalOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ClusterError(f"--local: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _start_local_head(state: ClusterState, options: LocalOptions, with_workers: bool,
                      timeout_s: float) -> HeadInfo:
    head_cpus = options.head_cpus if options.head_cpus is not None else (0 if with_workers else os.cpu_count())
    log = state.logs / "head.log"
    process, head = _start_head_process(
        options.host, options.host, head_cpus, 0 if with_workers else None, log, options.http_host,
        options.proxy_location, "local", dataclasses.asdict(options), str(state.new_token()))
    record = _process_record("head", process.pid, log)
    state.add_jobs([record])  # recorded before waiting, so a failed start can still be cleaned up
    try:
        _wait_for_head(head, process, log, timeout_s)
    except ClusterError:
        _stop_process(record)
        raise
    state.write_head(head)
    return head


def _add_local_workers(state: ClusterState, head: HeadInfo, options_dict: dict[str, Any], count: int,
                       timeout_s: float) -> None:
    options = LocalOptions.from_dict(options_dict)
    labels = _new_labels(count)
    records = []
    for label in labels:
        log = state.logs / f"worker-{label}.log"
        command = _worker_command(head.address, options.cpus_per_worker, options.gpus_per_worker, label)
        process = _spawn(command, log, str(state.token_file))
        records.append(_process_record("worker", process.pid, log))
    state.add_jobs(records)
    _wait_for_workers(head, labels, timeout_s, lambda: f"worker logs under {state.logs}")


def _process_record(role: str, pid: int, log: Path) -> dict[str, Any]:
    return {"role": role, "launcher": "local", "pid": pid, "create_time": psutil.Process(pid).create_time(),
            "log": str(log)}


def _stop_process(record: dict[str, Any], grace_s: float = 20.0) -> None:
    """Stop one recorded node: SIGTERM (Ray drains and stops its children), then SIGKILL its whole session.

    The record's creation time guards against a recycled PID: a different process is never touched.
    """
    pid = record["pid"]
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        process = psutil.Process(pid)
        if abs(process.create_time() - record["create_time"]) > 1.0:
            return
        process.terminate()
        process.wait(grace_s)
    _kill_session(pid)


def session_processes(sid: int) -> list[psutil.Process]:
    """Processes of session ``sid``: a local node's ``ray start`` and everything Ray spawned for it."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid:
                found.append(process)
    return found


def _kill_session(sid: int) -> None:
    leftovers = session_processes(sid)
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)
    psutil.wait_procs(leftovers, timeout=10)


# --------------------------------------------------------------------------------------------- Slurm launcher

_SUBMITIT_GENERIC = {"timeout_min", "mem_gb", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "name",
                     "stderr_to_stdout"}
_GPU_KEYS = {"gpus_per_node", "slurm_gpus_per_node", "slurm_gpus_per_task", "slurm_gres", "slurm_cpus_per_gpu",
             "slurm_mem_per_gpu"}
_SLURM_CORAL_KEYS = {"head_cpus_per_task", "head_mem_gb", "use_array", "proxy_location", "http_host"}


def slurm_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """submitit parameters from ``--slurm`` options: ``account``/``qos``/``partition``/... gain ``slurm_``.

    coral's own keys (``head_cpus_per_task``, ``head_mem_gb``, ``use_array``, ``proxy_location``,
    ``http_host``) are left out; submitit rejects unknown ``slurm_*`` names itself, listing valid ones.
    """
    params: dict[str, Any] = {}
    for key, value in options.items():
        if key in _SLURM_CORAL_KEYS:
            continue
        params[key if key in _SUBMITIT_GENERIC or key.startswith("slurm_") else f"slurm_{key}"] = value
    if "timeout_min" not in params and "slurm_time" not in params:
        params["timeout_min"] = _partition_time_limit_min(params.get("slurm_partition"))
    return params


def _partition_time_limit_min(partition: str | None) -> int:
    """The partition's time limit in minutes (one day when unlimited or unknown): submitit's default is 5."""
    command = ["sinfo", "-h", "-o", "%l"] + (["-p", partition] if partition else [])
    try:
        limits = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return 24 * 60
    minutes = [m for m in (_slurm_minutes(limit) for limit in limits) if m]
    return max(minutes) if minutes else 24 * 60


def _slurm_minutes(limit: str) -> int | None:
    """A Slurm time (``m``, ``m:s``, ``h:m:s``, ``d-h[:m[:s]]``) in minutes; None when unlimited or unreadable."""
    days, _, clock = limit.rpartition("-")
    parts = clock.split(":")
    if not all(part.isdigit() for part in parts) or not (days or "0").isdigit():
        return None  # "infinite", "UNLIMITED", "n/a"
    numbers = [int(part) for part in parts]
    if days:
        hours, minutes = numbers[0], (numbers[1] if len(numbers) > 1 else 0)
    elif len(numbers) == 3:
        hours, minutes = numbers[0], numbers[1]
    else:
        hours, minutes = 0, numbers[0]
    return int(days or 0) * 24 * 60 + hours * 60 + minutes


def _executor(state: ClusterState, params: dict[str, Any], name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=state.folder / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(name=name, **params)
    return executor


def _allocated_cpus() -> int:
    """CPUs Slurm gave this job (per task, else on the node), else the machine's."""
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(name, "").split("(")[0]
        if value.isdigit():
            return int(value)
    return os.cpu_count() or 1


def _gpus_in_job() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip()]) if visible else 0


def slurm_head_job(state_folder: str, head_only: bool, http_host: str, proxy_location: str,
                   options: dict[str, Any]) -> int:
    """Body of the head's Slurm job: start Ray's head, publish head.json, block while Ray runs.

    A head with workers offers no CPUs or GPUs to Ray (it runs GCS, dashboard and Serve's controller); a
    lone head offers what Slurm allocated.
    """
    import ray

    host = ray.util.get_node_ip_address()
    num_cpus = _allocated_cpus() if head_only else 0
    num_gpus = _gpus_in_job() if head_only else 0
    log = Path(state_folder) / "logs" / f"head-{os.environ.get('SLURM_JOB_ID', 'x')}.log"
    process, head = _start_head_process(host, "0.0.0.0", num_cpus, num_gpus, log, http_host, proxy_location,
                                        "slurm", options, str(Path(state_folder) / "ray_token"))
    head.pid, head.slurm_job_id = None, os.environ.get("SLURM_JOB_ID")
    try:
        _wait_for_head(head, process, log, timeout_s=600)
        _write_json(Path(state_folder) / HEAD_FILE, dataclasses.asdict(head))
        return process.wait()
    finally:  # scancel stopped Ray; make sure nothing it spawned outlives the job
        _kill_session(process.pid)


def slurm_worker_job(state_folder: str, label: str) -> int:
    """Body of a worker's Slurm job: join the head recorded in head.json with what Slurm allocated."""
    head = HeadInfo(**json.loads((Path(state_folder) / HEAD_FILE).read_text()))
    command = _worker_command(head.address, _allocated_cpus(), _gpus_in_job(), label)
    process = _spawn(command, Path(state_folder) / "logs" / f"worker-{label}.log", head.token_file or "")
    try:
        return process.wait()
    finally:
        _kill_session(process.pid)


def _start_slurm_head(state: ClusterState, options: dict[str, Any], with_workers: bool,
                      timeout_s: float) -> HeadInfo:
    params = slurm_parameters(options)
    state.new_token()
    if with_workers:  # the head does no model work: no GPUs, few CPUs
        params = {key: value for key, value in params.items() if key not in _GPU_KEYS}
        params["cpus_per_task"] = int(options.get("head_cpus_per_task", 2))
        if "head_mem_gb" in options:
            params["mem_gb"] = options["head_mem_gb"]
    job = _executor(state, params, "coral-ray-head").submit(
        slurm_head_job, str(state.folder), not with_workers, options.get("http_host", "0.0.0.0"),
        options.get("proxy_location", "EveryNode"), options)
    state.add_jobs([{"role": "head", "launcher": "slurm", "job_id": str(job.job_id)}])
    deadline = time.monotonic() + timeout_s
    while True:
        head = state.read_head() if state.head_file.exists() else None
        if head is not None and head.slurm_job_id == str(job.job_id) and head.reachable():
            return head
        slurm_state = job_states([str(job.job_id)]).get(str(job.job_id))
        if slurm_state is None or slurm_state in _ENDED:
            raise ClusterError(f"the head job {job.job_id} ended ({slurm_state or 'left the queue'}):\n"
                               f"{_submitit_log_tail(job)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"the head job {job.job_id} is {slurm_state} and wrote no reachable head.json "
                               f"after {timeout_s:.0f}s:\n{_submitit_log_tail(job)}")
        time.sleep(1.0)


def _add_slurm_workers(state: ClusterState, head: HeadInfo, options: dict[str, Any], count: int,
                       timeout_s: float) -> None:
    executor = _executor(state, slurm_parameters(options), "coral-ray-worker")
    labels = _new_labels(count)
    batch = executor.batch() if options.get("use_array", True) else contextlib.nullcontext()
    with batch:  # one array job, or one job per worker
        jobs = [executor.submit(slurm_worker_job, str(state.folder), label) for label in labels]
    ids = [str(job.job_id) for job in jobs]
    state.add_jobs([{"role": "worker", "launcher": "slurm", "job_id": job_id} for job_id in ids])
    _wait_for_workers(head, labels, timeout_s,
                      lambda: f"worker jobs {job_states(ids) or ids} (pending jobs join when they start; "
                              f"logs under {state.folder / 'submitit'})")


_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
          "DEADLINE"}


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job still in the queue (``squeue``); jobs that left it are absent."""
    if not job_ids:
        return {}
    try:
        result = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())
    return {job_id: states[job_id].strip() for job_id in job_ids if job_id in states}


def _submitit_log_tail(job: Any) -> str:
    parts = []
    for path in (job.paths.stderr, job.paths.stdout):
        if Path(path).exists():
            parts.append(f"--- {path}\n{_tail(Path(path))}")
    return "\n".join(parts) or f"(no submitit log yet under {job.paths.folder})"


# ---------------------------------------------------------------------------------------------- start / stop


def start_cluster(*, local: dict[str, Any] | None = None, slurm: dict[str, Any] | None = None,
                  add_workers: int = 0, cluster_id: str | None = None, coral_dir: str | Path | None = None,
                  force_new_head: bool = False, timeout_s: float = 600.0) -> HeadInfo:
    """Start a cluster's head (unless a reachable one is recorded) and add ``add_workers`` worker nodes.

    ``local`` (``LocalOptions`` fields) runs every node on this machine; ``slurm`` (submitit parameters:
    ``account``, ``qos``, ``partition``, ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``timeout_min``,
    any ``slurm_*``; plus ``head_cpus_per_task``, ``use_array``, ``proxy_location``) runs each node as a Slurm
    job. With neither, a recorded head keeps its launcher and a new cluster is local. A recorded head whose
    ports do not answer is stale: its processes/jobs are stopped and its files replaced.
    """
    if local is not None and slurm is not None:
        raise ClusterError("give either --local or --slurm, not both")
    if add_workers < 0:
        raise ClusterError(f"add_workers must be >= 0, got {add_workers}")
    state = ClusterState.locate(cluster_id, coral_dir)
    with state.lock():
        head = state.read_head()
        if head is not None and not force_new_head and head.reachable():
            wanted = "local" if local is not None else "slurm" if slurm is not None else head.launcher
            if wanted != head.launcher:
                raise ClusterError(f"cluster {state.cluster_id!r} runs on {head.launcher}; cannot add {wanted} "
                                   "workers (stop it first, or use another --cluster_id)")
        else:
            if head is not None or state.jobs_file.exists():
                _teardown(state, head)
            head = _start_head(state, local, slurm, add_workers > 0, timeout_s)
        if add_workers:
            adder = _add_local_workers if head.launcher == "local" else _add_slurm_workers
            adder(state, head, {**head.options, **(local or slurm or {})}, add_workers, timeout_s)
        return head


def _start_head(state: ClusterState, local: dict[str, Any] | None, slurm: dict[str, Any] | None,
                with_workers: bool, timeout_s: float) -> HeadInfo:
    if slurm is not None:
        return _start_slurm_head(state, slurm, with_workers, timeout_s)
    return _start_local_head(state, LocalOptions.from_dict(local or {}), with_workers, timeout_s)


def stop_cluster(*, cluster_id: str | None = None, coral_dir: str | Path | None = None) -> list[str]:
    """Shut Serve down, stop every recorded process (by PID) and Slurm job, and remove the state files.

    Only what this cluster started is touched: no global ``ray stop``. Returns what was stopped.
    """
    state = ClusterState.locate(cluster_id, coral_dir)
    with state.lock():
        return _teardown(state, state.read_head())


def _teardown(state: ClusterState, head: HeadInfo | None) -> list[str]:
    if head is not None and head.reachable():
        _serve_shutdown(head)
    stopped = []
    jobs = state.read_jobs()
    for record in sorted(jobs, key=lambda r: r["role"] == "head"):  # workers first, the head last
        if record["launcher"] == "local":
            _stop_process(record)
            stopped.append(f"{record['role']} pid {record['pid']}")
    slurm_ids = [record["job_id"] for record in jobs if record["launcher"] == "slurm"]
    if slurm_ids:
        _scancel(slurm_ids)
        stopped += [f"slurm job {job_id}" for job_id in slurm_ids]
    state.clear()
    return stopped


def _serve_shutdown(head: HeadInfo) -> None:
    """What ``serve shutdown`` does: DELETE the Serve applications through the dashboard."""
    with contextlib.suppress(OSError, ValueError):
        head.dashboard("/api/serve/applications/", method="DELETE", timeout_s=60)


def _scancel(job_ids: list[str], timeout_s: float = 120.0) -> None:
    """Cancel the jobs and wait until they leave the queue (their Ray processes are gone by then)."""
    try:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"scancel failed for jobs {job_ids}: {exc}") from None
    deadline = time.monotonic() + timeout_s
    while job_states(job_ids) and time.monotonic() < deadline:
        time.sleep(1.0)
