"""The results store: durable appends, resume by key, torn lines from a kill, one record per key."""

from __future__ import annotations

import json

import pytest

from coral.records import ConversationRecord, Turn
from coral.store import ResultStore, rank_file, read_records


def record(example_id: str, sample: int = 0, stop: str = "max_turns") -> ConversationRecord:
    turns = [Turn(index=0, speaker="student", text="q", generated=False), Turn(index=1, speaker="teacher", text="a")]
    return ConversationRecord(example_id, sample, "math", 1, "h", "coral", {"teacher": "m"}, turns, stop, 20)


def test_round_trip_keeps_every_field(tmp_path):
    original = record("a")
    original.turns[1].siblings = [Turn(index=1, speaker="teacher", text="alt", belief="2", correct=False)]
    ResultStore(tmp_path).append(original)
    [loaded] = read_records(tmp_path)
    assert loaded == original
    assert list(json.loads(rank_file(tmp_path).read_text()))[:3] == ["example_id", "sample_index", "task"]


def test_append_skips_keys_already_done_by_any_rank(tmp_path):
    ResultStore(tmp_path, rank=1).append(record("a"))
    store = ResultStore(tmp_path, rank=0)
    assert store.done == {("a", 0)}
    assert store.append(record("a")) is False
    assert store.append(record("a", 1)) is True
    assert sorted(r.key for r in read_records(tmp_path)) == [("a", 0), ("a", 1)]


def test_torn_last_line_is_ignored_then_truncated(tmp_path):
    ResultStore(tmp_path).append(record("a"))
    with open(rank_file(tmp_path), "a") as handle:
        handle.write('{"example_id": "b", "sample_in')  # the process died mid-write
    assert [r.key for r in read_records(tmp_path)] == [("a", 0)]
    store = ResultStore(tmp_path)
    store.append(record("b"))
    lines = rank_file(tmp_path).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_duplicate_keys_across_files_keep_the_first(tmp_path):
    for rank, stop in ((0, "agreement"), (1, "max_turns")):
        rank_file(tmp_path, rank).write_text(json.dumps(record("a", stop=stop).to_dict()) + "\n")
    [only] = read_records(tmp_path)
    assert only.stop_reason == "agreement"


def test_a_corrupt_complete_line_names_file_and_line(tmp_path):
    rank_file(tmp_path).write_text(json.dumps(record("a").to_dict()) + "\nnot json\n")
    with pytest.raises(ValueError, match=r"conversations\.jsonl, line 2"):
        read_records(tmp_path)
