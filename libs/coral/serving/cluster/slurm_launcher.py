"""The Slurm launcher: every node the body of a submitit job, the head publishing ``head.json`` when it answers.

The jobs' resources are ``SlurmClusterOptions``; ``scancel`` stops a node, and the job body makes sure nothing Ray
spawned outlives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from coral.serving.cluster.options import SlurmClusterOptions, SlurmJobOptions
from coral.serving.cluster.ray_processes import (
    kill_session,
    new_labels,
    spawn,
    start_head_process,
    tail,
    wait_for_head,
    wait_for_workers,
    worker_command,
)
from coral.serving.cluster.state import HEAD_FILE, ClusterError, ClusterState, HeadInfo, write_json


def slurm_parameters(options: SlurmJobOptions) -> dict[str, Any]:
    """Submitit parameters for one job: ``options``' own, and the partition's time limit unless one is set."""
    params = options.submitit_parameters()
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


def _executor(state: ClusterState, options: SlurmJobOptions, name: str) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=state.folder / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(name=name, **slurm_parameters(options))
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
    process, head = start_head_process(host, "0.0.0.0", num_cpus, num_gpus, log, http_host, proxy_location,
                                       "slurm", options, str(Path(state_folder) / "ray_token"))
    head.pid, head.slurm_job_id = None, os.environ.get("SLURM_JOB_ID")
    try:
        wait_for_head(head, process, log, timeout_s=600)
        write_json(Path(state_folder) / HEAD_FILE, dataclasses.asdict(head))
        return process.wait()
    finally:  # scancel stopped Ray; make sure nothing it spawned outlives the job
        kill_session(process.pid)


def slurm_worker_job(state_folder: str, label: str) -> int:
    """Body of a worker's Slurm job: join the head recorded in head.json with what Slurm allocated."""
    head = HeadInfo(**json.loads((Path(state_folder) / HEAD_FILE).read_text()))
    command = worker_command(head.address, _allocated_cpus(), _gpus_in_job(), label)
    process = spawn(command, Path(state_folder) / "logs" / f"worker-{label}.log", head.token_file or "")
    try:
        return process.wait()
    finally:
        kill_session(process.pid)


def start_slurm_head(state: ClusterState, options: SlurmClusterOptions, with_workers: bool,
                     timeout_s: float) -> HeadInfo:
    """Submit the head's job and wait until the ``head.json`` it writes names a head that answers."""
    state.new_token()
    job_options = options.head_job() if with_workers else options  # the head does no model work: no GPUs
    job = _executor(state, job_options, "coral-ray-head").submit(
        slurm_head_job, str(state.folder), not with_workers, options.http_host, options.proxy_location,
        dataclasses.asdict(options))
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


def add_slurm_workers(state: ClusterState, head: HeadInfo, options: SlurmClusterOptions, count: int,
                      timeout_s: float) -> None:
    """Submit ``count`` worker jobs and wait until every one has joined the cluster."""
    executor = _executor(state, options, "coral-ray-worker")
    labels = new_labels(count)
    batch = executor.batch() if options.use_array else contextlib.nullcontext()
    with batch:  # one array job, or one job per worker
        jobs = [executor.submit(slurm_worker_job, str(state.folder), label) for label in labels]
    ids = [str(job.job_id) for job in jobs]
    state.add_jobs([{"role": "worker", "launcher": "slurm", "job_id": job_id} for job_id in ids])
    wait_for_workers(head, labels, timeout_s,
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
            parts.append(f"--- {path}\n{tail(Path(path))}")
    return "\n".join(parts) or f"(no submitit log yet under {job.paths.folder})"


def scancel(job_ids: list[str], timeout_s: float = 120.0) -> None:
    """Cancel the jobs and wait until they leave the queue (their Ray processes are gone by then)."""
    try:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterError(f"scancel failed for jobs {job_ids}: {exc}") from None
    deadline = time.monotonic() + timeout_s
    while job_states(job_ids) and time.monotonic() < deadline:
        time.sleep(1.0)
