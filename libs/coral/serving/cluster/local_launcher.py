"""The local launcher: every node a ``ray start --block`` child of this machine, recorded by PID and start time.

(Not to be confused with ``coral.serving.local``, which serves one model over HTTP without Ray.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

import psutil

from coral.serving.cluster.options import LocalOptions
from coral.serving.cluster.ray_processes import (
    kill_session,
    new_labels,
    spawn,
    start_head_process,
    wait_for_head,
    wait_for_workers,
    worker_command,
)
from coral.serving.cluster.state import ClusterError, ClusterState, HeadInfo


def start_local_head(state: ClusterState, options: LocalOptions, with_workers: bool, timeout_s: float) -> HeadInfo:
    """Start the head here and record it; beside workers it offers Ray no GPUs and (by default) no CPUs."""
    head_cpus = options.head_cpus if options.head_cpus is not None else (0 if with_workers else os.cpu_count())
    log = state.logs / "head.log"
    process, head = start_head_process(
        options.host, options.host, head_cpus, 0 if with_workers else None, log, options.http_host,
        options.proxy_location, "local", dataclasses.asdict(options), str(state.new_token()))
    record = _process_record("head", process.pid, log)
    state.add_jobs([record])  # recorded before waiting, so a failed start can still be cleaned up
    try:
        wait_for_head(head, process, log, timeout_s)
    except ClusterError:
        stop_process(record)
        raise
    state.write_head(head)
    return head


def add_local_workers(state: ClusterState, head: HeadInfo, options: LocalOptions, count: int,
                      timeout_s: float) -> None:
    """Start ``count`` workers here joined to ``head``, and wait until every one is alive in the cluster."""
    labels = new_labels(count)
    records = []
    for label in labels:
        log = state.logs / f"worker-{label}.log"
        command = worker_command(head.address, options.cpus_per_worker, options.gpus_per_worker, label)
        process = spawn(command, log, str(state.token_file))
        records.append(_process_record("worker", process.pid, log))
    state.add_jobs(records)
    wait_for_workers(head, labels, timeout_s, lambda: f"worker logs under {state.logs}")


def _process_record(role: str, pid: int, log: Path) -> dict[str, Any]:
    return {"role": role, "launcher": "local", "pid": pid, "create_time": psutil.Process(pid).create_time(),
            "log": str(log)}


def stop_process(record: dict[str, Any], grace_s: float = 20.0) -> None:
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
    kill_session(pid)
