"""A real Ray cluster on this machine: start (replacing a stale record), deploy, health-check, status, remove, stop.

One head (no CPUs for replicas) and one worker (1 CPU) on 127.0.0.1, the embedded default model served by Ray
Serve with one replica, asked over HTTP and over Serve's gRPC proxy; what listens beyond loopback is checked.
Takes about a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
import sys

import psutil
import pytest

from coral.serving import cli
from coral.serving.cluster import (
    ClusterState,
    alive_nodes,
    free_ports,
    session_processes,
    start_cluster,
    stop_cluster,
)
from coral.serving.health import check_health, status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLUSTER = "local_test"
TINY = "[{'name': 'tiny', 'model': 'SmolLM2-135M-Instruct', 'min_replicas': 1, 'engine_args': {'max_sequences': 4}}]"


def _exposed(pids: list[int]) -> dict[int, str]:
    """Ports that the cluster's processes listen on beyond loopback: {port: process name}."""
    found = {}
    for pid in pids:
        for process in session_processes(pid):
            with contextlib.suppress(psutil.Error):
                for socket in process.net_connections(kind="inet"):
                    address = ipaddress.ip_address(socket.laddr.ip)
                    address = getattr(address, "ipv4_mapped", None) or address
                    if socket.status == psutil.CONN_LISTEN and not address.is_loopback:
                        found[socket.laddr.port] = process.name()
    return found


def _stale_record(state: ClusterState) -> int:
    """head.json/jobs.json left by a cluster that died: ports that answer nothing, a process that is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gcs, dashboard = free_ports(2)
    state.folder.mkdir(parents=True)
    state.head_file.write_text(json.dumps({
        "host": "127.0.0.1", "gcs_port": gcs, "dashboard_port": dashboard, "http_port": 1, "grpc_port": 2,
        "http_host": "127.0.0.1", "proxy_location": "HeadOnly", "launcher": "local", "pid": dead.pid}))
    state.jobs_file.write_text(json.dumps([{"role": "head", "launcher": "local", "pid": dead.pid,
                                            "create_time": 0.0, "log": "gone.log"}]))
    return gcs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    coral_dir = tmp_path_factory.mktemp("coral")
    state = ClusterState.locate(CLUSTER, coral_dir)
    stale_port = _stale_record(state)
    try:
        head = start_cluster(local={"cpus_per_worker": 1}, add_workers=1, cluster_id=CLUSTER, coral_dir=coral_dir,
                             timeout_s=240)
        assert head.gcs_port != stale_port  # the stale record was replaced
        yield state
    finally:
        stop_cluster(cluster_id=CLUSTER, coral_dir=coral_dir)


def test_local_cluster_serves_checks_and_stops(cluster, capsys):
    state = cluster
    coral_dir, head = str(state.folder.parent), state.require_head()
    jobs = state.read_jobs()
    assert [job["role"] for job in jobs] == ["head", "worker"]
    nodes = alive_nodes(head)
    assert sorted(node["resources_total"].get("CPU", 0) for node in nodes) == [0, 1]

    # the ray CLI reaches it with the environment start_cluster prints (on loopback, not by default)
    command = f"{head.ray_cli_env} {sys.executable} -m ray.scripts.scripts status --address {head.address}"
    shown = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0 and "Node status" in shown.stdout, shown.stderr[-2000:]

    # a second start finds the running head and adds nothing
    assert start_cluster(cluster_id=CLUSTER, coral_dir=coral_dir) == head
    assert len(state.read_jobs()) == 2

    common = ["--cluster_id", CLUSTER, "--coral_dir", coral_dir]
    assert cli.main(["deploy_applications", *common, "--applications", TINY, "--timeout_s", "300"]) == 0
    assert f"tiny: RUNNING  http http://127.0.0.1:{head.http_port}/tiny/v1" in capsys.readouterr().out
    # Everything listens on loopback but the two servers Ray 2.60 binds to [::] whatever it is told (README):
    # Serve's gRPC proxy and each replica's inter-deployment gRPC server.
    exposed = _exposed([job["pid"] for job in jobs])
    assert exposed.pop(head.grpc_port) == "ray::ProxyActor"
    assert list(exposed.values()) == ["ray::ServeReplica:tiny:EmbeddedDeployment"]

    http = check_health("tiny", cluster_id=CLUSTER, coral_dir=coral_dir, max_tokens=8)
    assert http.ok, http.error
    assert http.answer.strip() and http.replica and http.latency_s > 0
    grpc = check_health(f"grpc://127.0.0.1:{head.grpc_port}/tiny", max_tokens=8)
    assert grpc.ok, grpc.error
    assert (grpc.answer, grpc.replica) == (http.answer, http.replica)  # greedy: same replica, same answer

    report = status(cluster_id=CLUSTER, coral_dir=coral_dir)
    assert report["reachable"] and report["applications"]["tiny"]["status"] == "RUNNING"
    assert report["applications"]["tiny"]["replicas"] == {"RUNNING": 1}
    assert report["resources"]["CPU"] == [1.0, 1.0]
    assert cli.main(["status", *common]) == 0
    assert "app tiny: RUNNING" in capsys.readouterr().out

    assert cli.main(["remove", *common, "--app_name", "tiny"]) == 0
    assert status(cluster_id=CLUSTER, coral_dir=coral_dir)["applications"] == {}
    assert not check_health("tiny", cluster_id=CLUSTER, coral_dir=coral_dir).ok

    pids = [job["pid"] for job in jobs]
    assert all(session_processes(pid) for pid in pids)
    assert cli.main(["stop_cluster", *common]) == 0
    assert [p for pid in pids for p in session_processes(pid)] == []
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not state.head_file.exists() and not state.jobs_file.exists() and not state.deployment_file.exists()
