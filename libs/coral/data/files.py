"""Writing prepared splits: rows back in their source's own format, content hashes, an all-or-nothing folder.

Rows are written in the format they were read from, so each task's own loader reads the prepared files and
nothing new has to be trusted. Writing is deterministic (no timestamps, fixed serialisation), so the same
inputs give byte-identical files and their hashes in the manifest can be compared across machines.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coral.tasks.base import parse_json, read_jsonl, reading

ROW_FORMATS = (".jsonl", ".csv", ".json")
"""Suffixes of the row formats a split can be written in: JSONL, CSV, and Hi-ToM's ``{"data": [...]}``."""


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    r"""SHA-256 of a file, or of a directory as ``<relative path>\0<file sha256>\n`` per file, sorted by path.

    A directory source (the ``MATH/`` tree of 12,500 files) then has one hash that changes when any file is
    added, removed, renamed or edited, independent of where the tree lives.
    """
    if not path.is_dir():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def read_rows(path: Path) -> tuple[list[dict[str, Any]], tuple[str, ...] | None] | None:
    """A row file's rows exactly as stored (and a CSV's header), or None for anything else (a folder).

    Loaders keep derived values in ``Example.source`` (a round, an option permutation, a parsed field), so the
    rows written back are these, paired with the loader's examples, not ``Example.source`` itself.
    """
    if path.suffix == ".jsonl":
        return [row for _, row in read_jsonl(path)], None
    if path.suffix == ".csv":
        with reading(path), open(path, encoding="utf-8-sig", newline="") as handle:  # utf-8-sig: no BOM in names
            reader = csv.DictReader(handle)
            return list(reader), tuple(reader.fieldnames or ())
    if path.suffix == ".json" and path.is_file():
        with reading(path):
            document = parse_json(path.read_text(encoding="utf-8"), path)
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            return document["data"], None
    return None


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], header: Sequence[str] | None = None) -> None:
    r"""Write rows in the format named by ``path``'s suffix.

    ``.jsonl``: one ``json.dumps(row, ensure_ascii=False)`` per line. ``.csv``: ``header`` first, then one
    record per row, ``\n`` line ends, quoting as the csv module needs. ``.json``: ``{"data": rows}`` indented
    by 4, the call that reproduces Hi-ToM's ``Hi-ToM_data.json`` byte for byte.
    """
    suffix = path.suffix
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif suffix == ".csv":
            if header is None:
                raise ValueError(f"{path}: a CSV split needs the source's header")
            writer = csv.DictWriter(handle, fieldnames=list(header), extrasaction="raise", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        elif suffix == ".json":
            handle.write(json.dumps({"data": list(rows)}, indent=4, ensure_ascii=False))
        else:
            raise ValueError(f"{path}: no row format for suffix {suffix!r} (known: {', '.join(ROW_FORMATS)})")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``out``; on success move its files into ``out``, else delete it.

    A failure while writing or checking leaves ``out`` exactly as it was (absent, or with its previous files), never
    a half-written split: only finished files are moved, by rename. Files already in ``out`` that the new split
    does not produce (a README, say) are kept.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the renamed folder should look like any other
        yield stage
        if not out.exists():
            os.replace(stage, out)
            return
        for file in sorted(p for p in stage.rglob("*") if p.is_file()):
            target = out / file.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        shutil.rmtree(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
