"""The results store: durable appends, resume by key, torn lines from a kill or a full disk, one record per key,
errored conversations replaced on request."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from coral.records import ConversationRecord, Turn
from coral.store import ResultStore, StoreWriteError, rank_file, read_records, store_files


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


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, cut short like on a full disk (SIGXFSZ ignored meanwhile)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_failed_append_leaves_the_file_at_its_last_complete_record(tmp_path):
    store = ResultStore(tmp_path)
    store.append(record("a"))
    size = rank_file(tmp_path).stat().st_size
    with file_size_limit(size + 100), pytest.raises(StoreWriteError, match=r"conversations\.jsonl: could not store 1"):
        store.append(record("b"))  # half of the line fits
    assert rank_file(tmp_path).stat().st_size == size
    assert store.done == {("a", 0)}
    assert store.append(record("c")) is True  # space is back: the same store appends on a fresh line
    assert [r.key for r in read_records(tmp_path)] == [("a", 0), ("c", 0)]


def test_errored_keys_are_redone_only_when_asked_and_replaced_by_appending(tmp_path):
    ResultStore(tmp_path, rank=1).append_many([record("a"), record("b", stop="error"), record("c", stop="error")])
    store = ResultStore(tmp_path)
    assert store.done == {("a", 0), ("b", 0), ("c", 0)} and store.errored == {("b", 0), ("c", 0)}
    retry = ResultStore(tmp_path, retry_errors=True)  # rank 0: its file is read before rank 1's
    assert retry.done == {("a", 0)} and retry.errored == set()
    assert retry.append(record("b")) is True and retry.append(record("b")) is False
    # killed before c was redone: c keeps its errored record, b has only its new one
    stops = {r.example_id: (r.stop_reason, r.metadata.get("error_retry")) for r in read_records(tmp_path)}
    assert stops == {"a": ("max_turns", None), "b": ("max_turns", 1), "c": ("error", None)}
    ResultStore(tmp_path, retry_errors=True).append(record("c", stop="error"))  # fails again
    last = ResultStore(tmp_path, retry_errors=True)
    assert last.done == {("a", 0), ("b", 0)}
    last.append(record("c"))
    stops = {r.example_id: (r.stop_reason, r.metadata.get("error_retry")) for r in read_records(tmp_path)}
    assert stops == {"a": ("max_turns", None), "b": ("max_turns", 1), "c": ("max_turns", 2)}
    assert sum(len(path.read_text().splitlines()) for path in store_files(tmp_path)) == 6  # appended, not rewritten
