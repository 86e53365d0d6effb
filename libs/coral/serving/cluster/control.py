"""Start and stop a cluster: one lock per state folder, a stale record replaced, workers added by launcher."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coral.serving.cluster.local_launcher import add_local_workers, start_local_head, stop_process
from coral.serving.cluster.options import LocalOptions, SlurmClusterOptions
from coral.serving.cluster.slurm_launcher import add_slurm_workers, scancel, start_slurm_head
from coral.serving.cluster.state import ClusterError, ClusterState, HeadInfo


def start_cluster(*, local: LocalOptions | Mapping[str, Any] | None = None,
                  slurm: SlurmClusterOptions | Mapping[str, Any] | None = None, add_workers: int = 0,
                  cluster_id: str | None = None, coral_dir: str | Path | None = None, force_new_head: bool = False,
                  timeout_s: float = 600.0) -> HeadInfo:
    """Start a cluster's head (unless a reachable one is recorded) and add ``add_workers`` worker nodes.

    ``local`` (``LocalOptions``) runs every node on this machine; ``slurm`` (``SlurmClusterOptions``) runs each
    node as a Slurm job. Either may be a mapping of its fields, checked before anything starts; workers added to
    a recorded head take the head's options, changed by a mapping where it names them, or replaced by typed
    options. With neither, a recorded head keeps its launcher and a new cluster is local. A recorded head whose
    ports do not answer is stale: its processes/jobs are stopped and its files replaced.
    """
    if local is not None and slurm is not None:
        raise ClusterError("give either --local or --slurm, not both")
    if add_workers < 0:
        raise ClusterError(f"add_workers must be >= 0, got {add_workers}")
    local_options = None if local is None else _typed(LocalOptions, local)
    slurm_options = None if slurm is None else _typed(SlurmClusterOptions, slurm)
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
            if slurm_options is not None:
                head = start_slurm_head(state, slurm_options, add_workers > 0, timeout_s)
            else:
                head = start_local_head(state, local_options or LocalOptions(), add_workers > 0, timeout_s)
        if add_workers and head.launcher == "local":
            add_local_workers(state, head, LocalOptions.from_dict(_merged(head.options, local)), add_workers,
                              timeout_s)
        elif add_workers:
            add_slurm_workers(state, head, SlurmClusterOptions.from_dict(_merged(head.options, slurm)), add_workers,
                              timeout_s)
        return head


def _typed(kind: type[Any], options: Any) -> Any:
    return options if isinstance(options, kind) else kind.from_dict(options)


def _merged(recorded: dict[str, Any], given: Any) -> dict[str, Any]:
    """The options for new workers: a mapping changes the recorded ones it names; typed options replace them."""
    if given is None:
        return recorded
    return {**recorded, **given} if isinstance(given, Mapping) else dataclasses.asdict(given)


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
            stop_process(record)
            stopped.append(f"{record['role']} pid {record['pid']}")
    slurm_ids = [record["job_id"] for record in jobs if record["launcher"] == "slurm"]
    if slurm_ids:
        scancel(slurm_ids)
        stopped += [f"slurm job {job_id}" for job_id in slurm_ids]
    state.clear()
    return stopped


def _serve_shutdown(head: HeadInfo) -> None:
    """What ``serve shutdown`` does: DELETE the Serve applications through the dashboard."""
    with contextlib.suppress(OSError, ValueError):
        head.dashboard("/api/serve/applications/", method="DELETE", timeout_s=60)
