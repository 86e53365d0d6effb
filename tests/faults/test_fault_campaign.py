"""The fault campaign: a small evaluation run through the runner against coral's servers injecting 10% and 30%
faults, over HTTP and gRPC, compared with the same run without faults.

Every fault kind is forced once at the start of each run (``Injector.forced``), then faults are drawn at the rate.
Checked: every (example, sample) is stored exactly once; each turn records exactly the requests the server saw
for it and why each failed one failed; a requested wait (``Retry-After``, pushback) passed before the retry; the
conversations that completed without hostile text have the fault-free run's turns and metrics.
"""

from __future__ import annotations

import asyncio
import collections
import re

import pytest

from benchmarks.faults import (
    CONTENT_FAULTS,
    GRPC_FAULTS,
    HTTP_FAULTS,
    Evaluation,
    FaultPlan,
    Injected,
    Injector,
    completed_cleanly,
    deterministic_backend,
    lines_per_key,
    run_with_faults,
    session_of,
)
from coral.metrics import aggregate
from coral.records import ConversationRecord
from coral.store import read_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EVALUATION = Evaluation(examples=12, samples=2, max_turns=4, concurrency=8)
WAIT_S = 0.3
KINDS = {"http": HTTP_FAULTS, "grpc": GRPC_FAULTS}
REASONS = {  # how a turn records each transport fault
    "5xx": "HTTP 503", "429": "HTTP 429", "hang": "timed out|DEADLINE_EXCEEDED",
    "disconnect": "ClientPayloadError|ServerDisconnected", "malformed": "not JSON|could not be decoded",
    "empty": "no choices|answer holds 0", "unavailable": "UNAVAILABLE", "exhausted": "RESOURCE_EXHAUSTED",
}
WAITS = {"429", "exhausted"}


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory) -> dict[tuple[str, int], ConversationRecord]:
    root = tmp_path_factory.mktemp("fault_free")
    asyncio.run(EVALUATION.run(deterministic_backend(), root))
    return {record.key: record for record in read_records(root)}


@pytest.mark.parametrize("rate", [0.1, 0.3])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_faults_lose_nothing_are_retried_and_leave_completed_conversations_unchanged(
    protocol, rate, tmp_path, fault_free
):
    kinds = KINDS[protocol]
    plan = FaultPlan(rate=rate, kinds=kinds, seed=16, retry_after_s=WAIT_S, hang_s=2.0)
    injector = Injector(plan, collections.deque(kinds))
    run_with_faults(protocol, injector, EVALUATION, tmp_path)
    log = injector.log
    injected = collections.Counter(entry.fault for entry in log if entry.fault)
    assert set(injected) == set(kinds) and sum(injected.values()) >= len(kinds) + rate * len(log) / 2

    # every (example, sample) exactly once
    assert lines_per_key(tmp_path) == collections.Counter(dict.fromkeys(EVALUATION.keys(), 1))
    records = read_records(tmp_path)

    # each turn: the requests the server saw for it, and the reason of each transport fault, in order
    requests: dict[tuple[str | None, int | None], list[str | None]] = collections.defaultdict(list)
    for entry in log:
        requests[(entry.session, entry.seed)].append(entry.fault)
    for record in records:
        for turn in record.turns[1:]:
            seen = requests[(session_of(record), turn.seed)]
            failed = [fault for fault in seen if fault is not None and fault not in CONTENT_FAULTS]
            assert turn.attempts == len(seen) and len(turn.failures) == len(failed), (turn, seen)
            assert len(failed) == turn.attempts - (turn.error is None)
            for fault, reason in zip(failed, turn.failures):
                assert re.search(REASONS[fault], reason), (fault, reason)

    # a requested wait passed before the same request came again
    for earlier, later in retries(log):
        if earlier.fault in WAITS:
            assert later.at - earlier.at >= WAIT_S

    # conversations that completed without hostile text are the fault-free run's
    # (at 30% faults about half the conversations meet hostile text; which ones depends on arrival order)
    completed = completed_cleanly(records, injector)
    assert len(completed) >= len(records) // 4
    for record in completed:
        reference = fault_free[record.key]
        assert [t.text for t in record.turns] == [t.text for t in reference.turns]
        assert record.metrics == reference.metrics
    assert aggregate(completed) == aggregate([fault_free[r.key] for r in completed])
    assert any(t.attempts > 1 for r in completed for t in r.turns)


def retries(log: list[Injected]) -> list[tuple[Injected, Injected]]:
    """(a request, the next request with the same bytes), for every request that was sent again."""
    last: dict[str, Injected] = {}
    pairs = []
    for entry in log:
        if entry.key in last:
            pairs.append((last[entry.key], entry))
        last[entry.key] = entry
    return pairs
