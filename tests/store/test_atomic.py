"""coral.atomic: a write either replaces the file whole or leaves it (and its folder) as it was."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from coral.atomic import write_atomic


def test_a_write_replaces_the_file_and_a_failed_one_leaves_it_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.json"
    write_atomic(target, b"first\n")
    write_atomic(target, b"second\n")
    assert target.read_bytes() == b"second\n"

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"third\n")
    assert target.read_bytes() == b"second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
