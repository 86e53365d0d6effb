"""Writing SFT and DPO datasets for TRL and fairseq2, atomically, next to the settings and counts that made them.

One dataset folder (``TRL_TRAIN`` etc. name the paths)::

    trl/train.jsonl              TRL conversational rows
    fairseq2/train/train.jsonl   fairseq2 rows; set the recipe's dataset path to ``fairseq2/``: fairseq2 reads
                                 ``<path>/<split>/*.jsonl`` (0.4.x instruction/preference data and 0.8.x lm_sft)
    provenance.jsonl             line i says where line i of both train files came from (record, turn, seeds)
    settings.json                kind, selection settings, sources, seed, coral version, tokenizer
    counts.json                  what was read, built and dropped, and every file's line count (written last)

TRL rows. SFT: conversational prompt-completion, ``{"prompt": [messages], "completion": [assistant message]}``.
TRL 1.16's SFTTrainer takes it and by default (``completion_only_loss=None``) puts the loss on the completion only,
which is what a turn-level example needs; the ``{"messages": ...}`` form would also train on the partner's turns
unless the chat template carries generation markers (SmolLM2's does not). DPO: ``{"prompt": [messages],
"chosen": [assistant message], "rejected": [assistant message]}``, TRL's conversational preference format.

fairseq2 rows (reference 6.3, training.md 4.2). SFT ``{"src", "tgt"}``, DPO ``{"src", "tgt_chosen",
"tgt_rejected"}``. ``src`` is the prompt rendered by the model's chat template with the generation prompt, so it
already holds whatever BOS the template writes: train with ``source_encode_mode: as_is``, as Coral's configs do.
Targets are the bare reply: fairseq2 appends the tokenizer's EOS to targets itself (for SmolLM2 that EOS is
``<|im_end|>``, its end-of-turn token), so an EOS written here would be doubled.

A dataset appears all at once: it is written into a hidden sibling folder that is renamed into place, so a killed
run leaves either the previous dataset or none, never a partial one that looks complete. ``dataset_is_complete``
is what a driver checks before skipping a step.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from coral.backends.base import Message
from coral.synthesis.preferences import PreferencePair, prompt_key
from coral.synthesis.sft import SFTExample

TRL_TRAIN = "trl/train.jsonl"
FAIRSEQ2_TRAIN = "fairseq2/train/train.jsonl"
PROVENANCE = "provenance.jsonl"
SETTINGS = "settings.json"
COUNTS = "counts.json"
DATA_FILES = (TRL_TRAIN, FAIRSEQ2_TRAIN, PROVENANCE)
KINDS = {"sft": "examples", "dpo": "pairs"}
"""Dataset kind -> the counts.json key holding its number of rows."""


# ---- chat template -------------------------------------------------------------------------------------------


def load_chat_tokenizer(model: Any) -> Any:
    """A tokenizer with a chat template.

    ``model`` itself if it is one, else the tokenizer of the checkpoint that ``coral.backends.models.resolve`` finds
    for a model name or folder (so names mean the same as for evaluation).
    """
    if hasattr(model, "apply_chat_template"):
        tokenizer = model
    else:
        from transformers import AutoTokenizer

        from coral.backends.models import resolve

        tokenizer = AutoTokenizer.from_pretrained(resolve(os.fspath(model)))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', model)!r} has no chat template")
    return tokenizer


def prompt_renderer(tokenizer: Any) -> Callable[[list[Message]], str]:
    """Renders prompts as the model reads them before replying; prompts shared by many rows render once."""
    cache: dict[str, str] = {}

    def render(messages: list[Message]) -> str:
        key = prompt_key(messages)
        if key not in cache:
            cache[key] = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return cache[key]

    return render


# ---- rows ----------------------------------------------------------------------------------------------------


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def sft_files(examples: Sequence[SFTExample], tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    """The rows of every data file of an SFT dataset, line i of each describing the same example."""
    render = prompt_renderer(tokenizer)
    return {
        TRL_TRAIN: [{"prompt": e.prompt, "completion": _assistant(e.target)} for e in examples],
        FAIRSEQ2_TRAIN: [{"src": render(e.prompt), "tgt": e.target} for e in examples],
        PROVENANCE: [e.provenance() for e in examples],
    }


def dpo_files(pairs: Sequence[PreferencePair], tokenizer: Any) -> dict[str, list[dict[str, Any]]]:
    """The rows of every data file of a DPO dataset, line i of each describing the same pair."""
    render = prompt_renderer(tokenizer)
    return {
        TRL_TRAIN: [
            {"prompt": p.prompt, "chosen": _assistant(p.chosen), "rejected": _assistant(p.rejected)} for p in pairs
        ],
        FAIRSEQ2_TRAIN: [{"src": render(p.prompt), "tgt_chosen": p.chosen, "tgt_rejected": p.rejected} for p in pairs],
        PROVENANCE: [p.provenance() for p in pairs],
    }


# ---- settings.json -------------------------------------------------------------------------------------------


def _plain(settings: Any) -> dict[str, Any]:
    """Settings as they read back from JSON, so a stored copy compares equal to a live one."""
    data = asdict(settings) if is_dataclass(settings) and not isinstance(settings, type) else dict(settings)
    return json.loads(json.dumps(data))


def coral_version() -> str:
    """The installed coral's version, recorded in every dataset's settings.json."""
    try:
        return importlib.metadata.version("coral")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def dataset_settings(kind: str, settings: Any, sources: Sequence[Mapping[str, Any]], model: Any,
                     tokenizer: Any) -> dict[str, Any]:
    """Everything needed to rebuild or trace a dataset: what selected it, from which records, for which model."""
    if kind not in KINDS:
        raise ValueError(f"dataset kind must be one of {', '.join(KINDS)}, got {kind!r}")
    template = tokenizer.chat_template
    template = template if isinstance(template, str) else json.dumps(template)  # some tokenizers keep several
    return {
        "kind": kind,
        "settings": _plain(settings),
        "seed": _plain(settings).get("seed"),
        "sources": [dict(source) for source in sources],
        "model": getattr(model, "name_or_path", None) or os.fspath(model),
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "coral_version": coral_version(),
        "files": {
            "trl": TRL_TRAIN,
            "fairseq2": FAIRSEQ2_TRAIN,
            "fairseq2_dataset_path": "fairseq2",
            "provenance": PROVENANCE,
        },
    }


# ---- atomic writing and the completeness check ---------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _jsonl(rows: Sequence[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def write_dataset(out: str | Path, files: Mapping[str, Sequence[Mapping[str, Any]]], settings: Mapping[str, Any],
                  counts: Mapping[str, Any]) -> dict[str, Any]:
    """Write a dataset folder all at once (a temp folder renamed into place, replacing any older one).

    Returns counts as written to counts.json: ``counts`` plus ``files``, every data file's line count.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if set(files) != set(DATA_FILES):
        raise ValueError(f"a dataset has exactly the files {DATA_FILES}, got {sorted(files)}")
    written = {**counts, "files": {name: len(rows) for name, rows in files.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, rows in files.items():
            _write_text(tmp / name, _jsonl(rows))
        _write_text(tmp / SETTINGS, _json(settings))
        _write_text(tmp / COUNTS, _json(written))
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Between the two renames ``out`` is absent, which reads as "not built": never as a partial dataset."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _line_count(path: Path) -> int | None:
    """Number of lines, or None when the last line is unterminated (a torn write)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        return None
    return data.count(b"\n")


def dataset_is_complete(out: str | Path, settings: Any = None) -> bool:
    """Whether ``out`` holds a whole dataset.

    That is: settings.json and counts.json readable, every data file present with the line count counts.json
    records, and (when ``settings`` is given) built with exactly those settings.
    """
    out = Path(out)
    try:
        info = json.loads((out / SETTINGS).read_text(encoding="utf-8"))
        counts = json.loads((out / COUNTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    lines = counts.get("files") if isinstance(counts, dict) else None
    if not isinstance(info, dict) or info.get("kind") not in KINDS or not isinstance(lines, dict):
        return False
    if set(lines) != set(DATA_FILES) or counts.get(KINDS[info["kind"]]) != lines[TRL_TRAIN]:
        return False
    for name, expected in lines.items():
        path = out / name
        if not path.is_file() or _line_count(path) != expected:
            return False
    return settings is None or info.get("settings") == _plain(settings)
