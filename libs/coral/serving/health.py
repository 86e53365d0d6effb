"""Is a served model answering, and what does the cluster look like right now."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coral.backends.base import ChatRequest
from coral.sampling import SamplingParams
from coral.serving.cluster import ClusterState, HeadInfo, alive_nodes, job_states
from coral.serving.deploy import serve_details
from coral.serving.endpoints import backend_for

HEALTH_PROMPT = "What is 2+4=?"
"""Matrix's health-check question: short, and any model answers it."""


@dataclass(frozen=True)
class HealthReport:
    """The outcome of one test request.

    Args:
        target: the application name or URL asked.
        ok: an answer came back.
        answer: its text.
        latency_s: seconds from sending to the full answer.
        replica: which replica answered, where the server says.
        error: why it failed.
    """

    target: str
    ok: bool
    answer: str = ""
    latency_s: float = 0.0
    replica: str | None = None
    error: str | None = None


async def acheck_health(target: str, *, prompt: str = HEALTH_PROMPT, max_tokens: int = 32,
                        timeout_s: float = 120.0, cluster_id: str | None = None,
                        coral_dir: str | Path | None = None) -> HealthReport:
    """Send one greedy chat request to ``target`` (application name or URL) and report how it went."""
    started = time.perf_counter()
    try:
        backend = backend_for(target, timeout_s=timeout_s, cluster_id=cluster_id, coral_dir=coral_dir)
    except (LookupError, ValueError) as exc:
        return HealthReport(target, ok=False, error=str(exc))
    try:
        sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
        completion = (await backend.chat(ChatRequest([{"role": "user", "content": prompt}], sampling)))[0]
        return HealthReport(target, ok=True, answer=completion.text, latency_s=time.perf_counter() - started,
                            replica=completion.replica)
    except Exception as exc:  # any failure is the report, not a crash of the checker
        return HealthReport(target, ok=False, latency_s=time.perf_counter() - started,
                            error=f"{type(exc).__name__}: {exc}")
    finally:
        await backend.aclose()


def check_health(target: str, **kwargs: Any) -> HealthReport:
    """:func:`acheck_health` for synchronous callers (the CLI, notebooks without a running loop)."""
    return asyncio.run(acheck_health(target, **kwargs))


def status(*, cluster_id: str | None = None, coral_dir: str | Path | None = None) -> dict[str, Any]:
    """The cluster at a glance: head, whether it answers, nodes and resources, Serve applications, Slurm jobs."""
    state = ClusterState.locate(cluster_id, coral_dir)
    head = state.read_head()
    report: dict[str, Any] = {"cluster_id": state.cluster_id, "folder": str(state.folder),
                              "head": dataclasses.asdict(head) if head else None,
                              "reachable": bool(head and head.reachable())}
    if head is not None and report["reachable"]:
        report["nodes"] = _nodes(head)
        report["resources"] = _resources(head)
        report["applications"] = _applications(head)
    slurm_ids = [job["job_id"] for job in state.read_jobs() if job["launcher"] == "slurm"]
    if slurm_ids:
        states = job_states(slurm_ids)
        report["slurm_jobs"] = {job_id: states.get(job_id, "ENDED") for job_id in slurm_ids}
    return report


def _nodes(head: HeadInfo) -> list[dict[str, Any]]:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return [{"ip": node.get("node_ip"), "head": node.get("is_head_node", False),
                 "resources": {k: v for k, v in node.get("resources_total", {}).items() if k in ("CPU", "GPU")}}
                for node in alive_nodes(head)]
    return []


def _resources(head: HeadInfo) -> dict[str, list[float]]:
    """Resource -> [used, total] over the cluster (what ``ray status`` prints under Usage)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        usage = head.dashboard("/api/cluster_status")["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
        return {name: usage[name] for name in ("CPU", "GPU", "memory") if name in usage}
    return {}


def _applications(head: HeadInfo) -> dict[str, dict[str, Any]]:
    """Serve application -> status, message, replicas by state (from the dashboard's Serve API)."""
    try:
        apps = serve_details(head).get("applications") or {}
    except (OSError, ValueError) as exc:
        return {"(serve)": {"status": "UNKNOWN", "message": str(exc)}}
    summary = {}
    for name, info in apps.items():
        replicas: dict[str, int] = {}
        for deployment in (info.get("deployments") or {}).values():
            for replica in deployment.get("replicas") or []:
                replicas[replica.get("state", "?")] = replicas.get(replica.get("state", "?"), 0) + 1
        summary[name] = {"status": info.get("status"), "route_prefix": info.get("route_prefix"),
                         "message": info.get("message", ""), "replicas": replicas}
    return summary


def format_status(report: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    head = report["head"]
    if head is None:
        return f"cluster {report['cluster_id']}: not started (state folder {report['folder']})"
    lines = [f"cluster {report['cluster_id']} ({head['launcher']}) state folder {report['folder']}",
             (f"  head {head['host']}  gcs :{head['gcs_port']}  dashboard :{head['dashboard_port']}  "
              f"serve http :{head['http_port']}  grpc :{head['grpc_port']}  "
              f"{'reachable' if report['reachable'] else 'NOT REACHABLE (stale: start_cluster replaces it)'}")]
    for node in report.get("nodes", []):
        lines.append(f"  node {node['ip']}{' (head)' if node['head'] else ''}  {node['resources']}")
    for name, (used, total) in report.get("resources", {}).items():
        shown = (f"{used / 2**30:.1f}/{total / 2**30:.1f} GiB" if name == "memory" else f"{used:g}/{total:g}")
        lines.append(f"  {name}: {shown} used")
    for name, app in report.get("applications", {}).items():
        message = f"  {app['message']}" if app.get("message") else ""
        lines.append(f"  app {name}: {app['status']}  replicas {app.get('replicas', {})}{message}")
    for job_id, job_state in report.get("slurm_jobs", {}).items():
        lines.append(f"  slurm job {job_id}: {job_state}")
    return "\n".join(lines)
