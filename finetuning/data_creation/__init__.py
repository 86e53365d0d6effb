"""Data creation: conversation records -> SFT / DPO datasets (``build_sft.py``, ``build_dpo.py``).

Thin command lines over ``coral.synthesis``; their ``build_sft`` / ``build_dpo`` functions are what the iterative
driver calls in-process. This module holds what both share: reading several results folders and the parser.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coral.backends.models import DEFAULT_MODEL
from coral.records import ConversationRecord
from coral.store import read_records, store_files
from coral.synthesis.formats import dataset_settings, load_chat_tokenizer, write_dataset
from coral.synthesis.preferences import tree_key


def read_results(folders: Sequence[str | Path]) -> tuple[list[ConversationRecord], list[dict[str, Any]], int]:
    """Every record of every results folder (all rank files), the records read per folder, and how many were
    dropped as already read: the same conversation (task, example, config, run seed, sample) given twice, e.g.
    one folder listed twice or results copied into a second folder."""
    records, sources, seen, duplicates = [], [], set(), 0
    for folder in map(Path, folders):
        if not store_files(folder):
            raise FileNotFoundError(f"{folder}: no conversations*.jsonl results in this folder")
        found = read_records(folder)
        sources.append({"folder": os.fspath(folder.absolute()), "records": len(found)})
        for record in found:
            if tree_key(record) in seen:
                duplicates += 1
                continue
            seen.add(tree_key(record))
            records.append(record)
    return records, sources, duplicates


def build_dataset(kind: str, results: Sequence[str | Path], out: str | Path, settings: Any, model: Any,
                  select: Callable[..., tuple[list[Any], dict[str, Any]]],
                  files: Callable[..., dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Read, select, render and write one dataset; returns the counts written to counts.json."""
    records, sources, duplicates = read_results(results)
    tokenizer = load_chat_tokenizer(model)  # before selecting: a bad model name fails fast
    rows, counts = select(records, settings)
    read = {"records_read": sum(source["records"] for source in sources), "duplicate_records": duplicates}
    info = dataset_settings(kind, settings, sources, model, tokenizer)
    return write_dataset(out, files(rows, tokenizer), info, {**read, **counts})


def cli_parser(prog: str, description: str, settings_class: type) -> Any:
    """``--results ... --out ... --model ...`` plus one flag per settings field, its docstring as help."""
    from jsonargparse import ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--results", nargs="+", required=True, help="results folders (conversations*.jsonl)")
    parser.add_argument("--out", required=True, help="dataset folder to write (replaced atomically)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint folder: its chat template "
                        "renders fairseq2's src")
    parser.add_class_arguments(settings_class)
    return parser


def parse_settings(parser: Any, settings_class: type, argv: Sequence[str] | None) -> tuple[Any, Any]:
    """Parsed arguments and the settings object built from them."""
    from dataclasses import fields

    args = parser.parse_args(argv)
    return args, settings_class(**{f.name: args[f.name] for f in fields(settings_class)})
