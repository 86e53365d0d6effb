"""SFT and DPO with TRL, in this process, ending in a plain Hugging Face checkpoint directory.

``train(model, data_dir, out_dir, settings)`` reads ``<data_dir>/trl/train.jsonl`` (TRL's conversational format,
written by ``coral.synthesis.formats``), trains with TRL's ``SFTTrainer`` or ``DPOTrainer`` (LoRA through peft, or
full fine-tuning) and writes::

    <out_dir>/train_log.jsonl      one JSON line per logged step (loss, learning rate, DPO rewards, ...)
    <out_dir>/trainer/checkpoint-N TRL's own checkpoints, kept only while a run is unfinished (for resuming)
    <out_dir>/checkpoint/          merged weights + config + tokenizer: loads in the embedded engine, in
                                   transformers, and in vLLM (``vllm serve <out_dir>/checkpoint``)
    <out_dir>/adapter/             the LoRA adapter alone (``save="adapter"|"both"``): load it on top of the base
                                   model with peft, or serve it with ``vllm serve <base> --enable-lora
                                   --lora-modules coral=<out_dir>/adapter``

Each result directory ends with ``coral_train.json`` (settings, data hash, metrics), written last and atomically:
a directory without it is an interrupted save and never counts as a result (``checkpoint_is_complete``). A run
killed mid-training resumes from its latest TRL checkpoint when ``train`` is called again with the same folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from coral.backends import models

log = logging.getLogger(__name__)

MARKER = "coral_train.json"
"""Written last into every result directory; its presence means the directory is complete."""
MARKER_FORMAT = 1
LOG_FILE = "train_log.jsonl"
TRAINER_DIR = "trainer"
ROLES = ("system", "user", "assistant")

# Defaults with their source. LoRA: MAPoRL's official config, r=8, alpha=16, dropout 0.05 on every projection
# (training.md §1.3). Learning rates: Coral's fairseq2 8B configs, full fine-tuning, SFT 1e-7 and DPO 1e-6
# (coral_reference.md §6.3); with LoRA, MAPoRL's policy lr 1e-5 (training.md §1.3). DPO beta 0.1 (Coral, §6.3).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LR = {("sft", False): 1e-7, ("dpo", False): 1e-6, ("sft", True): 1e-5, ("dpo", True): 1e-5}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class TrainSettings:
    """How to train. Every field is recorded in the checkpoint's ``coral_train.json``.

    Args:
        method: ``sft`` (prompt -> completion) or ``dpo`` (prompt, chosen, rejected).
        lora: train a LoRA adapter (merged into the weights at the end) instead of every weight.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: dropout on the LoRA branch.
        target_modules: module names that get an adapter (Llama / Qwen projection names by default).
        learning_rate: peak learning rate; None takes the method's default (see ``DEFAULT_LR``).
        beta: DPO's KL strength; ignored by SFT.
        epochs: passes over the data, unless ``max_steps`` is set.
        max_steps: optimizer steps to run; -1 runs ``epochs`` passes.
        batch_size: rows (SFT) or pairs (DPO) per device per forward pass.
        grad_accum: forward passes accumulated into one optimizer step.
        max_length: tokens kept per example (prompt + completion), the rest is cut from the end.
        seed: seeds LoRA's initialisation, dropout and the data order.
        dtype: the weights' dtype while training and in the saved checkpoint, ``float32`` or ``bfloat16``; None:
            bfloat16 on CUDA (half the memory of a 1B model's fp32 weights, the dtype checkpoints ship in) and
            float32 on a CPU, where bf16 gains little and loses precision (``weight_dtype``).
        bf16: bf16 autocast (mixed precision) on top of ``dtype``; off by default.
        activation_checkpointing: recompute activations in the backward pass (saves memory on large models).
        reference_model: DPO's frozen reference (a packaged model name or checkpoint dir); None uses the policy's
            starting weights (with LoRA, TRL disables the adapter instead of keeping a second copy).
        save: ``merged`` (a full checkpoint), ``adapter`` (the LoRA adapter alone) or ``both``.
        save_steps: steps between TRL checkpoints, the points a killed run resumes from.
        logging_steps: steps between lines in ``train_log.jsonl``.
    """

    method: str = "dpo"
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    learning_rate: float | None = None
    beta: float = 0.1
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 2048
    seed: int = 0
    dtype: str | None = None
    bf16: bool = False
    activation_checkpointing: bool = False
    reference_model: str | None = None
    save: str = "merged"
    save_steps: int = 200
    logging_steps: int = 1

    def __post_init__(self) -> None:
        if self.method not in ("sft", "dpo"):
            raise ValueError(f"TrainSettings.method must be 'sft' or 'dpo', got {self.method!r}")
        if self.save not in ("merged", "adapter", "both"):
            raise ValueError(f"TrainSettings.save must be 'merged', 'adapter' or 'both', got {self.save!r}")
        if self.save != "merged" and not self.lora:
            raise ValueError(f"TrainSettings.save={self.save!r} needs lora=True (full fine-tuning has no adapter)")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 1 and self.max_steps != -1:
            raise ValueError(f"TrainSettings.max_steps must be -1 (use epochs) or >= 1, got {self.max_steps}")
        if self.max_steps == -1 and self.epochs <= 0:
            raise ValueError(f"TrainSettings.epochs must be > 0, got {self.epochs}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"TrainSettings.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")
        if self.beta <= 0:
            raise ValueError(f"TrainSettings.beta must be > 0, got {self.beta}")
        if self.dtype not in (None, *DTYPES):
            raise ValueError(f"TrainSettings.dtype must be one of {', '.join(DTYPES)} or None, got {self.dtype!r}")

    @property
    def lr(self) -> float:
        """The learning rate in force: the explicit one, else the default for (method, lora)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[(self.method, self.lora)]


def weight_dtype(dtype: str | None, device_type: str) -> torch.dtype:
    """The weights' dtype: the explicit one, else bfloat16 on CUDA and float32 elsewhere (CPU, MPS)."""
    if dtype is not None:
        return DTYPES[dtype]
    return torch.bfloat16 if device_type == "cuda" else torch.float32


def training_device() -> str:
    """Where the trainer runs: TRL uses CUDA whenever it is available (``use_cpu`` is set otherwise)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------------- data
def dataset_file(data_dir: Path) -> Path:
    """The TRL training file of a coral dataset folder."""
    path = Path(data_dir) / "trl" / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no TRL training file (a coral dataset folder holds trl/train.jsonl)")
    return path


def read_rows(path: Path, method: str) -> list[dict[str, list[dict[str, str]]]]:
    """Rows in the one shape TRL gets: DPO {prompt, chosen, rejected}, SFT {prompt, completion}."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise ValueError(f"{where}: a row must be a JSON object, got {type(raw).__name__}")
            rows.append(_dpo_row(raw, where) if method == "dpo" else _sft_row(raw, where))
    if not rows:
        raise ValueError(f"{path}: no rows to train on")
    return rows


def _dpo_row(raw: dict[str, Any], where: str) -> dict[str, list[dict[str, str]]]:
    return {key: _messages(raw, key, where) for key in ("prompt", "chosen", "rejected")}


def _sft_row(raw: dict[str, Any], where: str) -> dict[str, list[dict[str, str]]]:
    """A {"messages"} row trains on its last (assistant) message only, like fairseq2's src/tgt masking."""
    if "prompt" in raw or "completion" in raw:
        return {"prompt": _messages(raw, "prompt", where), "completion": _messages(raw, "completion", where)}
    if "messages" not in raw:
        raise ValueError(f"{where}: an SFT row needs 'prompt' + 'completion' or 'messages'; keys: {sorted(raw)}")
    messages = _messages(raw, "messages", where)
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: field 'messages' must end with an assistant message after at least one other")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _messages(raw: dict[str, Any], key: str, where: str) -> list[dict[str, str]]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field {key!r} must be a non-empty list of messages, got {value!r:.80}")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
            message.get("content"), str
        ):
            raise ValueError(f"{where}: field {key}[{i}] must be {{'role': one of {ROLES}, 'content': str}}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def file_sha256(path: Path) -> str:
    """The training file's fingerprint, recorded with the checkpoint so a result can be traced to its data."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- train
def train(
    model: str | Path,
    data_dir: Path,
    out_dir: Path,
    settings: TrainSettings,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train ``model`` on ``data_dir`` into ``out_dir``; returns the result directory (see the module docstring).

    Calling it again with the same arguments returns the finished result at once, or resumes a killed run from
    its latest TRL checkpoint. ``callbacks`` are extra ``transformers.TrainerCallback``s (progress, early stop).
    """
    out_dir = Path(out_dir)
    data_file = dataset_file(data_dir)
    identity = {"model": str(model), "data_sha256": file_sha256(data_file), "settings": asdict(settings)}
    result = out_dir / ("adapter" if settings.save == "adapter" else "checkpoint")
    if checkpoint_is_complete(result):
        return _reuse(result, identity)

    rows = read_rows(data_file, settings.method)
    base = models.resolve(str(model))
    _claim_trainer_dir(out_dir / TRAINER_DIR, identity)
    trainer = _trainer(base, rows, out_dir, settings, callbacks or [])
    resume = _last_trl_checkpoint(out_dir / TRAINER_DIR)
    if resume:
        log.info("resuming %s from %s", out_dir, resume)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume)
    metrics = _metrics(out_dir / LOG_FILE, output, time.perf_counter() - started, resume)

    record = {"format": MARKER_FORMAT, **identity, "base_dir": str(base), "data_file": str(data_file),
              "rows": len(rows), "dtype": str(weight_dtype(settings.dtype, training_device())).removeprefix("torch."),
              "metrics": metrics, "versions": _versions()}
    _save(trainer, out_dir, settings, record)
    shutil.rmtree(out_dir / TRAINER_DIR, ignore_errors=True)  # optimizer states are only needed to resume
    return result


def _reuse(result: Path, identity: dict[str, Any]) -> Path:
    """A finished result is returned as is, but only if it was trained from the same model, data and settings."""
    different = _differences(json.loads((result / MARKER).read_text(encoding="utf-8")), identity)
    if different:
        raise ValueError(
            f"{result} already holds a model trained with a different {', '.join(different)}; "
            "train into a new folder or delete this one"
        )
    log.info("%s is complete already; not training again", result)
    return result


def _differences(recorded: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """Keys of ``identity`` (model, data hash, settings) whose recorded JSON value differs."""
    return [key for key in identity if recorded.get(key) != json.loads(json.dumps(identity[key]))]


def _claim_trainer_dir(folder: Path, identity: dict[str, Any]) -> None:
    """Record what a run trains, so a resume never continues TRL checkpoints of other data or settings."""
    stamp = folder / "coral_run.json"
    if stamp.is_file():
        different = _differences(json.loads(stamp.read_text(encoding="utf-8")), identity)
        if different:
            raise ValueError(f"{folder} holds an unfinished run with a different {', '.join(different)}; "
                             "delete it to start over")
        return
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")


def _trainer(base: Path, rows: list[dict], out_dir: Path, settings: TrainSettings, callbacks: list) -> Any:
    """Load the policy (and reference), then build TRL's trainer for the method."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    set_seed(settings.seed)  # before any weight is created: LoRA's initialisation is random
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = weight_dtype(settings.dtype, training_device())
    policy = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    peft_config = None
    if settings.lora:
        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                                 target_modules=list(settings.target_modules), task_type="CAUSAL_LM")
    common: dict[str, Any] = dict(
        output_dir=str(out_dir / TRAINER_DIR), learning_rate=settings.lr, num_train_epochs=settings.epochs,
        max_steps=settings.max_steps, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, max_length=settings.max_length, seed=settings.seed,
        data_seed=settings.seed, bf16=settings.bf16, activation_checkpointing=settings.activation_checkpointing,
        use_cpu=training_device() == "cpu", report_to="none", logging_steps=settings.logging_steps,
        save_strategy="steps", save_steps=settings.save_steps, save_total_limit=2, dataloader_num_workers=0,
    )
    dataset = Dataset.from_list(rows)
    callbacks = [JsonlLogger(out_dir / LOG_FILE), *callbacks]
    if settings.method == "sft":
        return SFTTrainer(model=policy, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=callbacks)
    reference = None
    if settings.reference_model is not None:
        reference = AutoModelForCausalLM.from_pretrained(models.resolve(settings.reference_model), dtype=dtype)
    return DPOTrainer(model=policy, ref_model=reference, args=DPOConfig(beta=settings.beta, **common),
                      train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)


def _last_trl_checkpoint(folder: Path) -> str | None:
    """TRL's newest ``checkpoint-N`` that finished saving (its trainer_state.json is written last)."""
    if not folder.is_dir():
        return None
    steps = [int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(folder / f"checkpoint-{max(steps)}") if steps else None


class JsonlLogger(TrainerCallback):
    """Appends every log event of the trainer (loss, lr, DPO rewards) as one JSON line; survives resumes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):  # transformers' signature
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


def _metrics(log_file: Path, output: Any, duration_s: float, resumed_from: str | None) -> dict[str, Any]:
    """Final step loss from the log, mean loss and step count from TRL; a non-finite loss fails the run."""
    losses = [entry["loss"] for entry in _read_log(log_file) if "loss" in entry]
    final = losses[-1] if losses else output.training_loss
    if not math.isfinite(final) or not math.isfinite(output.training_loss):
        raise RuntimeError(f"training diverged: loss {final} (see {log_file}); no checkpoint was written")
    return {"final_loss": final, "train_loss": output.training_loss, "steps": output.global_step,
            "duration_s": round(duration_s, 3), "resumed_from": resumed_from}


def _read_log(log_file: Path) -> list[dict[str, Any]]:
    if not log_file.is_file():
        return []
    return [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines() if line.strip()]


def _versions() -> dict[str, str]:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


# ---------------------------------------------------------------------------------------------------- save
def _save(trainer: Any, out_dir: Path, settings: TrainSettings, record: dict[str, Any]) -> None:
    """Adapter first (merging changes the model in place), then merged weights; each marker goes in last."""
    model, tokenizer = trainer.model, trainer.processing_class
    if settings.save in ("adapter", "both"):
        write_result_dir(out_dir / "adapter", lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)),
                         {**record, "kind": "adapter"})
    if settings.save in ("merged", "both"):
        merged = model.merge_and_unload() if settings.lora else model
        merged.config.use_cache = True  # training turns the KV cache off; serving wants it
        write_result_dir(out_dir / "checkpoint",
                         lambda tmp: (merged.save_pretrained(tmp), tokenizer.save_pretrained(tmp)),
                         {**record, "kind": "merged"})


def write_result_dir(target: Path, write: Any, record: dict[str, Any]) -> None:
    """Write a result directory the way ``checkpoint_is_complete`` expects (also used by the fairseq2 exporter):
    ``write(tmp)`` fills a temporary sibling, which is moved into place; the marker is written last, atomically."""
    tmp = target.with_name(target.name + ".partial")
    for stale in (tmp, target):
        shutil.rmtree(stale, ignore_errors=True)
    write(tmp)
    tmp.replace(target)
    marker_tmp = target / (MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(marker_tmp, target / MARKER)


# ---------------------------------------------------------------------------------------------------- check
def checkpoint_problems(directory: Path) -> list[str]:
    """Why ``directory`` is not a usable result (empty when it is): marker, config, tokenizer, weight headers."""
    directory = Path(directory)
    try:
        record = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{directory / MARKER}: missing or unreadable ({exc.__class__.__name__})"]
    if not isinstance(record, dict) or record.get("kind") not in ("merged", "adapter") or "metrics" not in record:
        return [f"{directory / MARKER}: not a coral training record"]
    if record["kind"] == "adapter":
        config, weights = directory / "adapter_config.json", [directory / "adapter_model.safetensors"]
    else:
        config, weights = directory / "config.json", _weight_files(directory)
    problems = [] if _json_dict(config) else [f"{config}: missing or not a JSON object"]
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        problems.append(f"{directory}: no tokenizer files")
    problems += [f"{path}: missing or not a safetensors file" for path in weights if not _safetensors_ok(path)]
    return problems or ([] if weights else [f"{directory}: no weights"])


def checkpoint_is_complete(directory: Path) -> bool:
    """True when ``directory`` holds a finished result of ``train`` that loads (see ``checkpoint_problems``)."""
    return not checkpoint_problems(directory)


def _weight_files(directory: Path) -> list[Path]:
    index = _json_dict(directory / "model.safetensors.index.json")
    if index:
        return [directory / name for name in sorted(set(index.get("weight_map", {}).values()))]
    return [directory / "model.safetensors"]


def _json_dict(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _safetensors_ok(path: Path) -> bool:
    """Reads only the header (tensor names, shapes, offsets) and checks the file is as long as it says."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return bool(list(handle.keys()))
    except Exception:  # safetensors raises its own error types for truncated or foreign files
        return False


def main(argv: list[str] | None = None) -> Path:
    """``python -m finetuning.trainers.trl_trainer --model M --data DIR --out DIR [--method dpo --lora true ...]``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m finetuning.trainers.trl_trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="packaged model name or Hugging Face checkpoint folder")
    parser.add_argument("--data", required=True, help="dataset folder written by finetuning/data_creation")
    parser.add_argument("--out", required=True, help="training folder; the result is <out>/checkpoint")
    parser.add_class_arguments(TrainSettings, "settings", as_group=False)
    args = parser.parse_args(argv)
    settings = TrainSettings(**args.settings.as_dict())  # the group parses to a Namespace, not the dataclass
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = train(args.model, Path(args.data), Path(args.out), settings)
    print(result)
    return result


if __name__ == "__main__":
    main()
