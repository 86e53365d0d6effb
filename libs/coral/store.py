"""The append-only results store: one JSON line per finished conversation, safe against crashes and reruns.

Each process (rank) appends to its own ``conversations[.rank<N>].jsonl`` and flushes + fsyncs before a record
counts as done, so a kill loses only conversations still in flight. Records that finish together can be appended
with one write and one fsync (``append_many``, a group commit), which is what lets thousands of conversations a
second be stored durably. A line cut short by a kill is ignored on read and overwritten on the next append. A rerun
reads every rank's file and skips (example, sample) keys already present; reading also drops duplicate keys,
keeping the first, so a store is always one record per key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from coral.records import ConversationRecord

FILE_STEM = "conversations"


def rank_file(root: str | Path, rank: int = 0) -> Path:
    name = f"{FILE_STEM}.jsonl" if rank == 0 else f"{FILE_STEM}.rank{rank}.jsonl"
    return Path(root) / name


def store_files(root: str | Path) -> list[Path]:
    return sorted(Path(root).glob(f"{FILE_STEM}*.jsonl"))


def _complete_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines that end with a newline; a torn last line (the process died mid-write) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.endswith("\n") and line.strip():
                yield number, line


def read_records(root: str | Path) -> list[ConversationRecord]:
    """Every finished conversation under ``root``, one per (example, sample), in file then line order."""
    seen: set[tuple[str, int]] = set()
    records = []
    for path in store_files(root):
        for number, line in _complete_lines(path):
            try:
                record = ConversationRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"{path}, line {number}: not a conversation record ({exc})") from None
            if record.key not in seen:
                seen.add(record.key)
                records.append(record)
    return records


class ResultStore:
    """Appends records for one rank and knows which (example, sample) keys every rank has finished."""

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = rank_file(self.root, rank)
        self._truncate_torn_tail()
        self.done: set[tuple[str, int]] = {record.key for record in read_records(self.root)}

    def _truncate_torn_tail(self) -> None:
        """Cut a partial last line left by a kill, so the next append starts on a fresh line."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                handle.truncate(end)

    def append(self, record: ConversationRecord) -> bool:
        """Write one finished conversation durably; returns False (writing nothing) if its key is done."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[ConversationRecord]) -> list[bool]:
        """Write finished conversations durably with one write and one fsync (a group commit).

        Returns, per record, whether it was written: False for a key already done, or repeated earlier in
        ``records``. Keys count as done only once the fsync returned.
        """
        keys: set[tuple[str, int]] = set()
        lines, written = [], []
        for record in records:
            new = record.key not in self.done and record.key not in keys
            if new:
                keys.add(record.key)
                lines.append(encode(record))
            written.append(new)
        if lines:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("".join(lines))
                handle.flush()
                os.fsync(handle.fileno())
            self.done |= keys
        return written


def encode(record: ConversationRecord) -> str:
    """The record's JSON line: the same text as ``json.dumps(record.to_dict())``, without ``asdict``'s deep copy.

    ``dataclasses.asdict`` deep-copies every value before encoding, which cost more than everything else a
    conversation turn does; the encoder reads the fields in place, in the same (declaration) order.
    """
    return json.dumps(record, default=_fields, ensure_ascii=False) + "\n"


def _fields(value: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name, in declaration order (what ``asdict`` gives, one level deep)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _field_names(type(value))
        attributes = getattr(value, "__dict__", None)
        if attributes is not None and tuple(attributes) == names:  # the usual case: read it in place
            return attributes
        return {name: getattr(value, name) for name in names}
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))
