"""fairseq2 as an opt-in trainer for GPU clusters: Coral's recipe configs as data, a launcher, an HF exporter.

fairseq2 pins its own torch (0.4.6: torch 2.6.0 with CUDA, a ~5.4 GB environment; training.md §4.3-4.4), so it
lives in its own virtualenv or conda env and coral never imports it: ``launch`` runs its CLI as a subprocess.

Version: the 0.4.x line, which Coral used and which is the last one with the ``fairseq2`` console command and a
DPO recipe (``fairseq2 lm preference_finetune``); 0.5+ removed preference tuning and 0.8 has no console command
(training.md §4.1). Install: ``python -m venv ENV && ENV/bin/pip install fairseq2==0.4.6``, plus the system
library ``libsndfile1``. ``validate_fairseq2_config.py`` checks rendered configs against a real installation.

Flow::

    config = render_config("dpo_8b", data_dir, overrides={"regime.num_steps": 500})
    write_config(config, out_dir / "fairseq2_config.yaml")
    launch(out_dir / "fairseq2_config.yaml", out_dir, python="/path/to/ENV/bin/python")       # or slurm={...}
    export_checkpoint(out_dir, out_dir / "checkpoint", tokenizer_dir="/path/to/Llama-3.1-8B-Instruct")

Configs are kept as plain nested dicts; ``to_mergeable`` turns them into the ``_set_`` form that fairseq2's
``--config-file`` merges over the preset (a leaf must sit under ``_set_``; a plain key must already exist).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coral.errors import did_you_mean
from coral.synthesis.formats import FAIRSEQ2_TRAIN

FAIRSEQ2_VERSION = "0.4.6"
"""The fairseq2 release these configs, commands and the exporter were validated against."""
BASE_PRESET = "llama3_1_instruct"
"""fairseq2's preset that every config file is merged over (Coral's ``--preset llama3_1_instruct``)."""
RECIPES = {"sft": "instruction_finetune", "dpo": "preference_finetune"}
SECTIONS = ("model", "dataset", "gang", "trainer", "criterion", "optimizer", "lr_scheduler", "regime", "common")
"""Top-level sections of fairseq2 0.4.6's LM recipe configs (``criterion`` only in preference_finetune)."""

_ADAMW = {"betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.1}

# Coral's fairseq2 configs, key for key (coral_reference.md §6.3: sft.yaml + sft_8b.yaml, sft.yaml + sft_70b.yaml,
# dpo.yaml + dpo_8b.yaml, dpo.yaml + dpo_70b.yaml). Left out on purpose: the W&B recorder (Coral enabled it with
# project "ts-finetuning"; here it is off unless overridden) and the dataset path (set by render_config).
_SFT_REGIME = {"num_data_epochs": 20, "validate_every_n_steps": 100, "checkpoint_every_n_steps": 100,
               "keep_last_n_checkpoints": 5, "keep_last_n_models": 10, "publish_metrics_every_n_steps": 5}
_DPO_REGIME = {"num_steps": 1000, "num_data_epochs": 20, "checkpoint_every_n_steps": 200,
               "keep_last_n_checkpoints": 5, "keep_last_n_models": 10, "publish_metrics_every_n_steps": 5}


def _dpo_criterion(reference: str) -> dict[str, Any]:
    return {"name": "dpo", "config": {"reference_model": {"name": reference}, "reference_dtype": "bfloat16",
                                      "beta": 0.1, "nll_scale": 0.0, "length_normalization": False}}


PRESETS: dict[str, dict[str, Any]] = {
    "sft_8b": {
        "model": {"name": "llama3_1_8b_instruct"},
        "dataset": {"max_num_tokens": 8192, "max_num_valid_tokens": 8192, "max_seq_len": 8192,
                    "source_encode_mode": "as_is"},
        "optimizer": {"config": {**_ADAMW, "lr": 1.0e-7}},
        "lr_scheduler": {"config": {"final_lr": 1.0e-8, "final_lr_scale": None, "num_warmup_steps": 100}},
        "regime": {**_SFT_REGIME, "num_steps": 200},
    },
    "sft_70b": {
        "model": {"name": "llama3_1_70b_instruct"},
        "dataset": {"max_num_tokens": 8192, "max_seq_len": 8192, "source_encode_mode": "as_is"},
        "gang": {"tensor_parallel_size": 8},
        "optimizer": {"config": {**_ADAMW, "lr": 2.5e-6}},
        "lr_scheduler": {"config": {"final_lr": 2.5e-7, "final_lr_scale": None, "num_warmup_steps": 50}},
        "regime": {**_SFT_REGIME, "num_steps": 1000},
    },
    "dpo_8b": {
        "model": {"name": "llama3_1_8b_instruct"},
        "dataset": {"source_encode_mode": "as_is", "max_num_tokens": 8192},
        "criterion": _dpo_criterion("llama3_1_8b_instruct"),
        "optimizer": {"config": {**_ADAMW, "lr": 1.0e-6}},
        "lr_scheduler": {"config": {"final_lr": None, "final_lr_scale": 0.1, "num_warmup_steps": 50}},
        "regime": dict(_DPO_REGIME),
    },
    "dpo_70b": {
        "model": {"name": "llama3_1_70b_instruct"},
        "dataset": {"source_encode_mode": "as_is", "max_num_tokens": 4096, "batch_size": 1, "min_seq_len": 1,
                    "max_seq_len": 4096},
        "gang": {"tensor_parallel_size": 8},
        "criterion": _dpo_criterion("llama3_1_70b_instruct"),
        "trainer": {"gradient_accumulation": 8},
        "optimizer": {"config": {**_ADAMW, "lr": 1.0e-6}},
        "lr_scheduler": {"config": {"final_lr": 1.0e-7, "final_lr_scale": None, "num_warmup_steps": 50}},
        "regime": dict(_DPO_REGIME),
    },
}

SLURM_NODES = {"sft_8b": 1, "dpo_8b": 1, "sft_70b": 4, "dpo_70b": 16}
"""Nodes per preset in Coral's sbatch script, each with 8 GPUs, 8 tasks and 10 CPUs per task (§6.2)."""
SLURM_DEFAULTS = {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8, "cpus_per_task": 10, "time_min": 24 * 60}
SLURM_KEYS = (*SLURM_DEFAULTS, "partition", "account", "qos", "mem", "job_name", "extra")


# ---------------------------------------------------------------------------------------------------- configs
def render_config(
    preset: str, data_dir: Path, model: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A full recipe config (plain nested dict) for ``preset``, reading ``<data_dir>/fairseq2``.

    Args:
        preset: one of ``PRESETS``.
        data_dir: a coral dataset folder (``coral.synthesis.formats``); its fairseq2 rows are under
            ``fairseq2/train/``, which fairseq2 0.4.x reads as the split named ``train``.
        model: fairseq2 asset name of the model to train (default: the preset's); a DPO reference stays the
            preset's unless overridden (``criterion.config.reference_model.name``), as in Coral.
        overrides: dotted keys to set, e.g. ``{"regime.num_steps": 500, "common.seed": 3}``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown fairseq2 preset {preset!r}{did_you_mean(preset, PRESETS)}; known: {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    train_file = Path(FAIRSEQ2_TRAIN)  # fairseq2/train/train.jsonl
    dataset = config["dataset"]
    dataset["path"] = str(Path(data_dir).resolve() / train_file.parent.parent)
    dataset["name"] = f"coral_{preset.split('_')[0]}"
    if "criterion" not in config:
        dataset["train_split"] = train_file.parent.name
    if model is not None:
        config["model"]["name"] = model
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return config


def _set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    allowed = [s for s in SECTIONS if s != "criterion" or "criterion" in config]
    if parts[0] not in allowed:
        raise ValueError(f"override {key!r}: unknown section {parts[0]!r}{did_you_mean(parts[0], allowed)}")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} holds a value, not a section")
    node[parts[-1]] = value


def recipe_of(config: Mapping[str, Any]) -> str:
    """The fairseq2 recipe a config belongs to: only preference tuning has a ``criterion`` section."""
    return RECIPES["dpo"] if "criterion" in config else RECIPES["sft"]


def to_mergeable(config: Mapping[str, Any]) -> dict[str, Any]:
    """fairseq2's override form: non-empty sections stay keys, every leaf moves under the section's ``_set_``."""
    out: dict[str, Any] = {}
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out[key] = to_mergeable(value)
        else:
            leaves[key] = value
    if leaves:
        out["_set_"] = leaves
    return out


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """Write ``config`` as a fairseq2 ``--config-file`` (mergeable YAML), headed by the command that runs it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# fairseq2 {FAIRSEQ2_VERSION} config rendered by coral (finetuning/trainers/fairseq2.py). Run:\n"
              f"#   fairseq2 lm {recipe_of(config)} OUTPUT_DIR --preset {BASE_PRESET} --no-sweep-dir "
              f"--config-file {path.name}\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(to_mergeable(config), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def read_config(path: Path) -> dict[str, Any]:
    """A config file written by ``write_config``, back as a mergeable dict."""
    loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a fairseq2 config file (expected a YAML mapping)")
    return loaded


# ---------------------------------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class LaunchResult:
    """What ``launch`` started: the command, and its exit code (local) or Slurm job id (sbatch)."""

    command: list[str]
    log: Path
    returncode: int | None = None
    job_id: str | None = None


def build_command(
    config_path: Path, out_dir: Path, *, python: str | None = None, conda_env: str | None = None, nproc: int = 1
) -> list[str]:
    """The fairseq2 command line for a config file, in a virtualenv (``python``) or a conda env.

    One process runs the ``fairseq2`` console script of that environment; ``nproc`` > 1 starts it under
    ``torchrun --standalone`` (fairseq2's cluster detection reads torchrun's variables). Under Slurm, ``srun``
    starts one task per GPU instead (see ``render_sbatch``).
    """
    if (python is None) == (conda_env is None):
        raise ValueError("give exactly one of python= (a fairseq2 virtualenv's interpreter) or conda_env=")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    recipe = recipe_of(read_config(config_path))
    args = ["lm", recipe, str(out_dir), "--preset", BASE_PRESET, "--no-sweep-dir", "--config-file", str(config_path)]
    if python is not None:
        bin_dir = Path(python).parent  # the venv's bin/ (not resolved: a venv's python is a symlink)
        prefix, fairseq2, torchrun = [], str(bin_dir / "fairseq2"), str(bin_dir / "torchrun")
    else:
        assert conda_env is not None  # exactly one of the two, checked above
        prefix, fairseq2, torchrun = ["conda", "run", "--no-capture-output", "-n", conda_env], "fairseq2", "torchrun"
    if nproc == 1:
        return [*prefix, fairseq2, *args]
    return [*prefix, torchrun, "--standalone", f"--nproc-per-node={nproc}", "--no-python", fairseq2, *args]


def render_sbatch(command: list[str], out_dir: Path, slurm: Mapping[str, Any]) -> str:
    """An sbatch script running ``command`` once per task with ``srun`` (Coral's layout, §6.2)."""
    unknown = [key for key in slurm if key not in SLURM_KEYS]
    if unknown:
        raise ValueError(f"unknown slurm option {unknown[0]!r}{did_you_mean(unknown[0], SLURM_KEYS)}; known: "
                         f"{', '.join(SLURM_KEYS)}")
    opts = {**SLURM_DEFAULTS, **slurm}
    lines = ["#!/bin/bash", f"#SBATCH --job-name={opts.get('job_name', 'coral-fairseq2')}",
             f"#SBATCH --nodes={opts['nodes']}", f"#SBATCH --ntasks-per-node={opts['tasks_per_node']}",
             f"#SBATCH --gpus-per-node={opts['gpus_per_node']}", f"#SBATCH --cpus-per-task={opts['cpus_per_task']}",
             f"#SBATCH --time={opts['time_min']}", f"#SBATCH --output={Path(out_dir) / 'slurm-%j.out'}"]
    lines += [f"#SBATCH --{key}={opts[key]}" for key in ("partition", "account", "qos", "mem") if key in opts]
    lines += [f"#SBATCH {extra}" for extra in opts.get("extra", [])]
    lines += ["set -euo pipefail", f"srun {shlex.join(command)}", ""]
    return "\n".join(lines)


def launch(
    config_path: Path,
    out_dir: Path,
    *,
    python: str | None = None,
    conda_env: str | None = None,
    slurm: Mapping[str, Any] | None = None,
    nproc: int = 1,
) -> LaunchResult:
    """Run fairseq2 on ``config_path`` into ``out_dir``: locally (blocks; output in ``<out_dir>/launch.log``) or
    submitted with ``sbatch`` (returns the job id at once; output in ``<out_dir>/slurm-<job>.out``).

    Rerunning into the same ``out_dir`` resumes: fairseq2 restores the last checkpoint under ``checkpoints/``.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = Path(config_path).resolve()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}  # coral's paths, not fs2's
    if slurm is None:
        command = build_command(config_path, out_dir, python=python, conda_env=conda_env, nproc=nproc)
        log = out_dir / "launch.log"
        with log.open("w", encoding="utf-8") as handle:
            handle.write(f"$ {shlex.join(command)}\n")
            handle.flush()
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False).returncode
        if code != 0:
            raise RuntimeError(f"fairseq2 exited with code {code}; see {log}")
        return LaunchResult(command, log, returncode=code)
    if nproc != 1:
        raise ValueError("nproc is for local runs; under Slurm set slurm['tasks_per_node'] (one task per GPU)")
    script = out_dir / "launch.sbatch"
    script.write_text(render_sbatch(build_command(config_path, out_dir, python=python, conda_env=conda_env),
                                    out_dir, slurm), encoding="utf-8")
    command = ["sbatch", "--parsable", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch failed with code {done.returncode}: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    return LaunchResult(command, out_dir / f"slurm-{job_id}.out", job_id=job_id)


# ---------------------------------------------------------------------------------------------------- export
# fairseq2 0.4.x LLaMA parameter names -> Hugging Face LlamaForCausalLM names (the inverse of the map fairseq2
# applies when it loads an HF checkpoint, fairseq2/models/llama/_handler.py: convert_llama_checkpoint).
_HF_NAMES = [
    (r"^decoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.output_proj\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^decoder\.layers\.(\d+)\.ffn\.gate_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^decoder\.layers\.(\d+)\.ffn\.inner_proj\.", r"model.layers.\1.mlp.up_proj."),
    (r"^decoder\.layers\.(\d+)\.ffn\.output_proj\.", r"model.layers.\1.mlp.down_proj."),
    (r"^decoder\.layers\.(\d+)\.ffn_layer_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^decoder\.layer_norm\.", "model.norm."),
    (r"^decoder_frontend\.embed\.", "model.embed_tokens."),
    (r"^final_proj\.", "lm_head."),
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model")


def latest_step(fairseq2_out: Path) -> Path:
    """The newest finished ``checkpoints/step_N`` (fairseq2 writes ``step_N.tmp`` and renames it when done)."""
    folder = Path(fairseq2_out) / "checkpoints"
    steps = [p for p in folder.glob("step_*") if re.fullmatch(r"step_\d+", p.name) and p.is_dir()]
    if not steps:
        raise FileNotFoundError(f"{folder}: no finished fairseq2 checkpoint (checkpoints/step_N)")
    return max(steps, key=lambda p: int(p.name.split("_")[1]))


def export_checkpoint(fairseq2_out: Path, hf_out: Path, *, tokenizer_dir: Path, step: int | None = None) -> Path:
    """Turn a fairseq2 0.4.x LLaMA checkpoint into a plain Hugging Face checkpoint directory.

    fairseq2 0.4.x has no HF weight exporter: ``fairseq2 llama convert_checkpoint`` writes Meta's reference
    format and ``write_hf_config`` a config for vLLM's ``Fairseq2LlamaForCausalLM`` loader, which is how Coral
    served its checkpoints (linking ``model.pt`` + ``config.json`` and copying tokenizer files, §6.4). This
    writes an ordinary ``LlamaForCausalLM`` directory instead, loadable by transformers, the embedded engine
    and any vLLM: weights renamed (and q/k rows un-permuted, undoing fairseq2's rotary layout), the step's
    ``config.json`` with the HF architecture, and the tokenizer files copied from ``tokenizer_dir`` (fairseq2
    checkpoints carry none). Only single-file checkpoints (``model.pt``; tensor parallel size 1) are handled.
    """
    import torch
    from safetensors.torch import save_file

    from finetuning.trainers.trl_trainer import write_result_dir

    step_dir = Path(fairseq2_out) / "checkpoints" / f"step_{step}" if step is not None else latest_step(fairseq2_out)
    model_file = step_dir / "model.pt"
    if not model_file.is_file():
        shards = sorted(p.name for p in step_dir.glob("model.*.pt"))
        raise FileNotFoundError(f"{model_file} is missing" + (
            f"; found tensor-parallel shards {shards}, which this exporter does not merge: serve them with vLLM's "
            "fairseq2 loader as Coral did, or train with gang.tensor_parallel_size=1" if shards else ""))
    config = json.loads((step_dir / "config.json").read_text(encoding="utf-8"))
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=True, mmap=True)
    weights = hf_llama_weights(checkpoint[checkpoint.get("model_key", "model")], config)
    dtype = next(iter(weights.values())).dtype
    hf_config = {**config, "architectures": ["LlamaForCausalLM"], "torch_dtype": str(dtype).removeprefix("torch.")}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        copied = [name for name in TOKENIZER_FILES if (Path(tokenizer_dir) / name).is_file()]
        if "tokenizer.json" not in copied and "tokenizer.model" not in copied:
            raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer.json or tokenizer.model to copy")
        for name in copied:
            shutil.copy2(Path(tokenizer_dir) / name, tmp / name)

    step_nr = int(step_dir.name.split("_")[1])
    record = {"format": 1, "kind": "merged", "trainer": f"fairseq2 {FAIRSEQ2_VERSION}", "source": str(step_dir),
              "tokenizer_dir": str(tokenizer_dir), "metrics": {"steps": step_nr}}
    write_result_dir(Path(hf_out), write, record)
    return Path(hf_out)


def hf_llama_weights(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """fairseq2 LLaMA tensors under HF names; q/k projections back from fairseq2's rotary row order."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    out = {}
    for name, tensor in state.items():
        hf_name = next((re.sub(pattern, repl, name) for pattern, repl in _HF_NAMES if re.match(pattern, name)), None)
        if hf_name is None:
            raise ValueError(f"fairseq2 parameter {name!r} has no Hugging Face LLaMA counterpart")
        if hf_name.endswith("self_attn.q_proj.weight"):
            tensor = _unpermute(tensor, heads, hidden)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            tensor = _unpermute(tensor, kv_heads, hidden)
        out[hf_name] = tensor.contiguous()
    return out


def _unpermute(weight: Any, num_heads: int, hidden: int) -> Any:
    """fairseq2 keeps each head's rotary pairs interleaved (H, D/2, 2, M); HF keeps them in halves (H, 2, D/2, M)."""
    head_dim = weight.shape[0] // num_heads
    return weight.view(num_heads, head_dim // 2, 2, hidden).transpose(1, 2).reshape(-1, hidden)
