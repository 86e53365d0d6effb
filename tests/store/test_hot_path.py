"""The orchestration hot path keeps its guarantees: group commit, record encoding, seed prefixes, rule extraction."""

from __future__ import annotations

import asyncio
import json
import os

from coral.backends import ScriptedBackend
from coral.beliefs import BeliefExtractor, Extraction
from coral.conversation import Agent, ConversationRunner, CoralProtocol, RunSettings
from coral.records import ConversationRecord, Turn
from coral.sampling import SamplingParams
from coral.seeding import SeedPrefix, derive_seed
from coral.store import ResultStore, encode, read_records
from coral.tasks import Example, MMLUProTask


def record(example_id: str, sample: int = 0) -> ConversationRecord:
    turns = [Turn(index=0, speaker="student", text="q", generated=False), Turn(index=1, speaker="teacher", text="a")]
    return ConversationRecord(example_id, sample, "math", 1, "h", "coral", {"teacher": "m"}, turns, "max_turns", 20)


# tests/store/test_store.py
def test_append_many_writes_each_new_key_once(tmp_path):
    store = ResultStore(tmp_path)
    store.append(record("a"))
    assert store.append_many([record("a"), record("b"), record("b", 1), record("b")]) == [False, True, True, False]
    assert [r.key for r in read_records(tmp_path)] == [("a", 0), ("b", 0), ("b", 1)]
    assert store.done == {("a", 0), ("b", 0), ("b", 1)}


def test_a_line_is_the_json_of_the_records_dict(tmp_path):
    original = record("é")
    original.turns[1].siblings = [Turn(index=1, speaker="teacher", text="ü", belief="2", correct=False)]
    original.metadata = {"groups": {"order": "2"}, "pair": (1, 2)}
    original.metrics = {"x": 0.5, "y": None}
    assert encode(original) == json.dumps(original.to_dict(), ensure_ascii=False) + "\n"


# tests/conversation/test_runner_commit.py
MC = Example(id="mc", task="mmlu_pro", question="Pick B.", answer="B", choices=("x", "y", "z"))


def test_records_that_end_together_share_one_fsync_and_are_on_disk_when_reported(tmp_path, monkeypatch):
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    backend = ScriptedBackend(lambda messages, sampling: f"The correct answer is ({'AB'[len(messages) % 2]}).")
    agents = {n: Agent(n, backend, "m", "sys", SamplingParams(max_tokens=8)) for n in ("teacher", "student")}
    store = ResultStore(tmp_path)
    settings = RunSettings(7, "h", max_turns=3)
    runner = ConversationRunner(CoralProtocol(), MMLUProTask(), agents, BeliefExtractor("rules"), store, settings)
    reported = []

    def on_done(done: ConversationRecord) -> None:
        assert done.key in {r.key for r in read_records(tmp_path)}  # durable before it counts as done
        reported.append(done.key)

    assert asyncio.run(runner.run(runner.pending([MC], 40), on_done)) == 40
    assert sorted(reported) == [("mc", s) for s in range(40)]
    assert len(read_records(tmp_path)) == 40
    assert 1 <= len(fsyncs) < 40
    assert asyncio.run(runner.run(runner.pending([MC], 40))) == 0  # resume: nothing left, nothing duplicated


# tests/test_seeding.py (or tests/conversation)
def test_seed_prefix_derives_the_same_seeds():
    for parts, more in ((("ex", 0), ("turn", 3, 0)), (("ex/é", 2), ()), ((), ("judge", 1, 2**62))):
        assert SeedPrefix(11, *parts).derive(*more) == derive_seed(11, *parts, *more)


# tests/beliefs/test_belief_extractor.py
def test_by_rules_says_when_the_judge_is_needed():
    task = MMLUProTask()
    stated, vague = "The correct answer is (B).", "maybe the second"
    assert BeliefExtractor("rules").by_rules(task, MC, vague) == Extraction(None, "none")
    assert BeliefExtractor("rules_then_judge").by_rules(task, MC, stated) == Extraction("B", "rule")
    assert BeliefExtractor("rules_then_judge").by_rules(task, MC, vague) is None
    assert BeliefExtractor("judge").by_rules(task, MC, stated) is None
