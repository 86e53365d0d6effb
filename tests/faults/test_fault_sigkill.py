"""SIGKILL of the client at 20 random (seeded) points, each followed by a restart, then a run to the end: no
conversation lost, none stored twice, no torn record left behind.

The client is a separate process (``python -m benchmarks.faults client``) running the evaluation into one results
folder against coral's HTTP server injecting 10% transport faults. A kill point is "after 0-3 more records reached
the store, plus 0-50 ms", so kills land during startup, between conversations and during writes.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.faults import (
    KILL_EVALUATION,
    TRANSPORT_HTTP_FAULTS,
    Client,
    FaultPlan,
    Injector,
    deterministic_backend,
    faulty_http_app,
    kill_and_restart,
    lost_and_duplicated,
)
from coral.backends.retry import RetryPolicy
from coral.serving.local import LocalServer
from coral.store import rank_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KILLS = 20
SEED = 16
EVALUATION = KILL_EVALUATION  # 140 conversations, 4 at a time


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path):
    plan = FaultPlan(rate=0.1, kinds=TRANSPORT_HTTP_FAULTS, seed=SEED, retry_after_s=0.2, hang_s=2.0)
    client = Client(timeout_s=0.5, retry=RetryPolicy(attempts=5, backoff_s=0.01, max_backoff_s=2.0))
    app = faulty_http_app(deterministic_backend(latency_s=0.005), Injector(plan))
    with LocalServer(app, log_level="critical") as server:
        report = kill_and_restart(server.base_url, tmp_path, EVALUATION, KILLS, SEED, client)

    assert report.final_returncode == 0
    assert report.mid_run >= KILLS * 3 // 4  # kills hit a running client, not one that had finished
    assert lost_and_duplicated(tmp_path, EVALUATION.keys()) == (0, 0)
    text = rank_file(tmp_path).read_text(encoding="utf-8")
    assert text.endswith("\n")
    for line in text.splitlines():  # every line a whole record
        json.loads(line)
