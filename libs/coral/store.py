"""The append-only results store: one JSON line per finished conversation, safe against crashes and reruns.

Each process (rank) appends to its own ``conversations[.rank<N>].jsonl`` and flushes + fsyncs before a record
counts as done, so a kill loses only conversations still in flight. Records that finish together can be appended
with one write and one fsync (``append_many``, a group commit), which is what lets thousands of conversations a
second be stored durably. A line cut short by a kill is ignored on read and overwritten on the next append; an
append that fails (a full disk) cuts its partial line off before raising, so the file always ends at its last
complete record. A rerun reads every rank's file and skips (example, sample) keys already present; reading also
drops duplicate keys, keeping the first, so a store is always one record per key.

Errored conversations are redone only when asked (``retry_errors``). The new record is appended, never written
over the old one, and carries ``metadata["error_retry"]`` (1 for the first retry of that key, then 2, ...); reading
keeps, per key, the record with the highest count. Replacing is therefore as atomic as one append: after a kill at
any point a key has either its old errored record or its complete new one, never both and never neither.
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
    """The results file a rank writes under ``root`` (rank 0 keeps the plain name)."""
    name = f"{FILE_STEM}.jsonl" if rank == 0 else f"{FILE_STEM}.rank{rank}.jsonl"
    return Path(root) / name


def store_files(root: str | Path) -> list[Path]:
    """Every rank's results file under ``root``, sorted."""
    return sorted(Path(root).glob(f"{FILE_STEM}*.jsonl"))


def _complete_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Lines that end with a newline; a torn last line (the process died mid-write) is skipped."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.endswith("\n") and line.strip():
                yield number, line


RETRY_KEY = "error_retry"
"""``metadata`` key of a record that replaces an errored one: how many times that key was retried."""


def error_retries(record: ConversationRecord) -> int:
    """How many errored records of its key this record replaces (0: the key's first record)."""
    return int(record.metadata.get(RETRY_KEY, 0))


def read_records(root: str | Path) -> list[ConversationRecord]:
    """Every finished conversation under ``root``, one per (example, sample), in file then line order.

    Of several records of one key, the latest retry of an errored conversation wins, else the first.
    """
    kept: dict[tuple[str, int], ConversationRecord] = {}
    for path in store_files(root):
        for number, line in _complete_lines(path):
            try:
                record = ConversationRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"{path}, line {number}: not a conversation record ({exc})") from None
            old = kept.get(record.key)
            if old is None or error_retries(record) > error_retries(old):
                kept[record.key] = record
    return list(kept.values())


class StoreWriteError(OSError):
    """Finished conversations could not be stored (e.g. the disk is full); the store file is left intact."""


class ResultStore:
    """Appends records for one rank and knows which (example, sample) keys every rank has finished.

    Args:
        root: the results folder.
        rank: this process's rank (its own file).
        retry_errors: keys whose record ended in an error count as not done, and their new records replace them.
    """

    def __init__(self, root: str | Path, rank: int = 0, retry_errors: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = rank_file(self.root, rank)
        self._truncate_torn_tail()
        records = read_records(self.root)
        errored = {record.key: error_retries(record) for record in records if record.stop_reason == "error"}
        self._retry_of = {key: retries + 1 for key, retries in errored.items()} if retry_errors else {}
        self.done: set[tuple[str, int]] = {record.key for record in records} - self._retry_of.keys()
        self.errored = set(errored) - self._retry_of.keys()  # done, but ended in an error

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
        ``records``. Keys count as done only once the fsync returned. A record replacing an errored one (see
        ``retry_errors``) is marked with its retry count.

        Raises:
            StoreWriteError: the write or the fsync failed; nothing of this batch stays in the file.
        """
        keys: set[tuple[str, int]] = set()
        lines, written = [], []
        for record in records:
            new = record.key not in self.done and record.key not in keys
            if new:
                keys.add(record.key)
                if record.key in self._retry_of:
                    record.metadata[RETRY_KEY] = self._retry_of[record.key]
                lines.append(encode(record))
            written.append(new)
        if lines:
            self._append("".join(lines).encode("utf-8"), len(lines))
            self.done |= keys
        return written

    def _append(self, data: bytes, count: int) -> None:
        """Write and fsync ``data`` at the end of the file, or cut the file back to where it ended and raise.

        Unbuffered, so nothing of a failed write lingers in a buffer to be flushed later behind a good line.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            end = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, end)
                raise StoreWriteError(
                    f"{self.path}: could not store {count} finished conversation(s): {exc.strerror or exc}; the file "
                    "still ends at its last complete record, so a rerun (once the cause is fixed) redoes only these"
                ) from exc
        finally:
            os.close(fd)


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
