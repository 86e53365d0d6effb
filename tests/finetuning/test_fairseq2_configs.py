"""fairseq2 configs, command lines and the HF exporter.

The fast tests need no fairseq2. The tests marked ``real_fairseq2`` run against a real fairseq2 installation and are
skipped unless ``CORAL_FAIRSEQ2_PYTHON`` names its interpreter, e.g.::

    python -m venv /work/venvs/fairseq2 && /work/venvs/fairseq2/bin/pip install fairseq2==0.4.6  # + libsndfile1
    CORAL_FAIRSEQ2_PYTHON=/work/venvs/fairseq2/bin/python python -m pytest -q tests/finetuning/test_fairseq2_configs.py
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from coral.backends import models
from finetuning.trainers import fairseq2 as fs2
from finetuning.trainers.trl_trainer import checkpoint_problems

ROOT = Path(__file__).resolve().parents[2]
FS2_PYTHON = os.environ.get("CORAL_FAIRSEQ2_PYTHON")
real_fairseq2 = pytest.mark.skipif(not FS2_PYTHON, reason="CORAL_FAIRSEQ2_PYTHON does not name a fairseq2 interpreter")


def hf_tokenizer() -> Path:
    """Any Hugging Face tokenizer files do for the exporter's checks; SmolLM2's are on this machine."""
    return models.resolve("SmolLM2-135M-Instruct")


def get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


# Coral's values, coral_reference.md §6.3 (dotted key -> value), checked key by key.
EXPECTED = {
    "sft_8b": {"model.name": "llama3_1_8b_instruct", "optimizer.config.lr": 1e-7, "regime.num_steps": 200,
               "lr_scheduler.config.final_lr": 1e-8, "lr_scheduler.config.final_lr_scale": None,
               "lr_scheduler.config.num_warmup_steps": 100, "regime.num_data_epochs": 20,
               "dataset.max_num_tokens": 8192, "dataset.max_num_valid_tokens": 8192, "dataset.max_seq_len": 8192,
               "dataset.source_encode_mode": "as_is", "regime.checkpoint_every_n_steps": 100},
    "sft_70b": {"model.name": "llama3_1_70b_instruct", "optimizer.config.lr": 2.5e-6, "regime.num_steps": 1000,
                "gang.tensor_parallel_size": 8, "lr_scheduler.config.final_lr": 2.5e-7,
                "lr_scheduler.config.num_warmup_steps": 50, "dataset.max_seq_len": 8192},
    "dpo_8b": {"model.name": "llama3_1_8b_instruct", "criterion.name": "dpo", "criterion.config.beta": 0.1,
               "criterion.config.nll_scale": 0.0, "criterion.config.length_normalization": False,
               "criterion.config.reference_model.name": "llama3_1_8b_instruct",
               "criterion.config.reference_dtype": "bfloat16", "optimizer.config.lr": 1e-6,
               "lr_scheduler.config.final_lr": None, "lr_scheduler.config.final_lr_scale": 0.1,
               "lr_scheduler.config.num_warmup_steps": 50, "regime.num_steps": 1000,
               "regime.checkpoint_every_n_steps": 200, "dataset.max_num_tokens": 8192},
    "dpo_70b": {"model.name": "llama3_1_70b_instruct", "criterion.config.beta": 0.1,
                "criterion.config.reference_model.name": "llama3_1_70b_instruct", "gang.tensor_parallel_size": 8,
                "trainer.gradient_accumulation": 8, "optimizer.config.lr": 1e-6, "dataset.batch_size": 1,
                "dataset.max_num_tokens": 4096, "dataset.max_seq_len": 4096, "lr_scheduler.config.final_lr": 1e-7},
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_presets_carry_corals_hyperparameters(preset, tmp_path):
    config = fs2.render_config(preset, tmp_path)
    for key, value in EXPECTED[preset].items():
        assert get(config, key) == value, key
    assert get(config, "optimizer.config.betas") == [0.9, 0.95] and get(config, "optimizer.config.weight_decay") == 0.1
    assert get(config, "dataset.path") == str(tmp_path.resolve() / "fairseq2")
    assert fs2.recipe_of(config) == ("preference_finetune" if preset.startswith("dpo") else "instruction_finetune")


def test_data_path_model_and_overrides_land_in_their_keys(tmp_path):
    sft = fs2.render_config("sft_8b", tmp_path / "data", model="my_llama", overrides={"regime.num_steps": 7})
    assert sft["dataset"]["path"] == str((tmp_path / "data" / "fairseq2").resolve())
    assert sft["dataset"]["train_split"] == "train"  # coral.synthesis.formats writes fairseq2/train/train.jsonl
    assert sft["model"]["name"] == "my_llama" and sft["regime"]["num_steps"] == 7
    dpo = fs2.render_config("dpo_8b", tmp_path, model="my_llama", overrides={"common.seed": 3})
    assert dpo["model"]["name"] == "my_llama" and "train_split" not in dpo["dataset"]
    assert dpo["criterion"]["config"]["reference_model"]["name"] == "llama3_1_8b_instruct"  # Coral: reference fixed
    assert dpo["common"] == {"seed": 3}
    assert fs2.PRESETS["dpo_8b"]["model"]["name"] == "llama3_1_8b_instruct"  # rendering never mutates the preset


def test_unknown_names_are_refused_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="unknown fairseq2 preset 'dpo_8B' \\(did you mean 'dpo_8b'\\?\\)"):
        fs2.render_config("dpo_8B", tmp_path)
    with pytest.raises(ValueError, match="unknown section 'regim' \\(did you mean 'regime'\\?\\)"):
        fs2.render_config("sft_8b", tmp_path, overrides={"regim.num_steps": 1})
    with pytest.raises(ValueError, match="unknown section 'criterion'"):
        fs2.render_config("sft_8b", tmp_path, overrides={"criterion.config.beta": 0.2})
    with pytest.raises(ValueError, match="'lr' holds a value"):
        fs2.render_config("sft_8b", tmp_path, overrides={"optimizer.config.lr.x": 1})


def test_config_file_is_in_fairseq2s_mergeable_form(tmp_path):
    config = fs2.render_config("dpo_8b", tmp_path)
    merged = fs2.to_mergeable(config)
    assert merged["criterion"] == {
        "config": {"reference_model": {"_set_": {"name": "llama3_1_8b_instruct"}},
                   "_set_": {"reference_dtype": "bfloat16", "beta": 0.1, "nll_scale": 0.0,
                             "length_normalization": False}},
        "_set_": {"name": "dpo"},
    }
    assert merged["lr_scheduler"] == {"config": {"_set_": {"final_lr": None, "final_lr_scale": 0.1,
                                                           "num_warmup_steps": 50}}}
    path = fs2.write_config(config, tmp_path / "cfg" / "dpo.yaml")
    text = path.read_text()
    assert text.splitlines()[1] == ("#   fairseq2 lm preference_finetune OUTPUT_DIR --preset llama3_1_instruct "
                                    "--no-sweep-dir --config-file dpo.yaml")
    assert fs2.read_config(path) == merged


def test_command_lines_for_a_virtualenv_and_a_conda_env(tmp_path):
    cfg = fs2.write_config(fs2.render_config("dpo_8b", tmp_path), tmp_path / "dpo.yaml")
    sft = fs2.write_config(fs2.render_config("sft_8b", tmp_path), tmp_path / "sft.yaml")
    tail = ["--preset", "llama3_1_instruct", "--no-sweep-dir", "--config-file"]
    assert fs2.build_command(cfg, Path("/out"), python="/envs/fs2/bin/python") == [
        "/envs/fs2/bin/fairseq2", "lm", "preference_finetune", "/out", *tail, str(cfg)]
    assert fs2.build_command(sft, Path("/out"), python="/envs/fs2/bin/python", nproc=2) == [
        "/envs/fs2/bin/torchrun", "--standalone", "--nproc-per-node=2", "--no-python", "/envs/fs2/bin/fairseq2",
        "lm", "instruction_finetune", "/out", *tail, str(sft)]
    assert fs2.build_command(cfg, Path("/out"), conda_env="fs2") == [
        "conda", "run", "--no-capture-output", "-n", "fs2", "fairseq2", "lm", "preference_finetune", "/out",
        *tail, str(cfg)]
    assert fs2.build_command(cfg, Path("/out"), conda_env="fs2", nproc=4) == [
        "conda", "run", "--no-capture-output", "-n", "fs2", "torchrun", "--standalone", "--nproc-per-node=4",
        "--no-python", "fairseq2", "lm", "preference_finetune", "/out", *tail, str(cfg)]
    with pytest.raises(ValueError, match="exactly one of python="):
        fs2.build_command(cfg, Path("/out"), python="/x/python", conda_env="fs2")
    with pytest.raises(ValueError, match="exactly one of python="):
        fs2.build_command(cfg, Path("/out"))


def test_sbatch_script_runs_fairseq2_once_per_task(tmp_path):
    command = ["/envs/fs2/bin/fairseq2", "lm", "preference_finetune", "/out dir", "--config-file", "/c.yaml"]
    script = fs2.render_sbatch(command, Path("/out dir"), {"nodes": fs2.SLURM_NODES["dpo_70b"], "account": "acc",
                                                           "qos": "high", "extra": ["--exclusive"]})
    assert script.splitlines() == [
        "#!/bin/bash", "#SBATCH --job-name=coral-fairseq2", "#SBATCH --nodes=16", "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --time=1440",
        "#SBATCH --output=/out dir/slurm-%j.out", "#SBATCH --account=acc", "#SBATCH --qos=high",
        "#SBATCH --exclusive", "set -euo pipefail",
        "srun /envs/fs2/bin/fairseq2 lm preference_finetune '/out dir' --config-file /c.yaml"]
    with pytest.raises(ValueError, match="unknown slurm option 'gpu_per_node' \\(did you mean 'gpus_per_node'\\?\\)"):
        fs2.render_sbatch(command, Path("/o"), {"gpu_per_node": 8})


def fake_executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_launch_runs_the_command_and_fails_loudly(tmp_path, monkeypatch):
    """A stand-in fairseq2 console script records its arguments and the PYTHONPATH it was given."""
    env_bin = tmp_path / "env" / "bin"
    fake_executable(env_bin / "fairseq2", 'echo "args: $*"\necho "pythonpath: [$PYTHONPATH]"\n')
    cfg = fs2.write_config(fs2.render_config("dpo_8b", tmp_path), tmp_path / "dpo.yaml")
    monkeypatch.setenv("PYTHONPATH", "/coral/site-packages")
    result = fs2.launch(cfg, tmp_path / "out", python=str(env_bin / "python"))
    assert result.returncode == 0 and result.command[:3] == [str(env_bin / "fairseq2"), "lm", "preference_finetune"]
    log = result.log.read_text().splitlines()
    assert log[1] == f"args: lm preference_finetune {tmp_path / 'out'} --preset llama3_1_instruct --no-sweep-dir " \
                     f"--config-file {cfg}"
    assert log[2] == "pythonpath: []"  # coral's paths must not leak into fairseq2's interpreter
    fake_executable(env_bin / "fairseq2", "echo boom\nexit 3\n")
    with pytest.raises(RuntimeError, match="fairseq2 exited with code 3; see .*launch.log"):
        fs2.launch(cfg, tmp_path / "out", python=str(env_bin / "python"))


def test_launch_submits_to_slurm_with_sbatch(tmp_path, monkeypatch):
    fake_bin = tmp_path / "slurm_bin"
    fake_executable(fake_bin / "sbatch", f'echo "$*" > {tmp_path / "sbatch_args"}\necho "4242;cluster"\n')
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = fs2.write_config(fs2.render_config("sft_70b", tmp_path), tmp_path / "sft.yaml")
    result = fs2.launch(cfg, tmp_path / "out", conda_env="fs2", slurm={"nodes": 4, "partition": "gpu"})
    script = tmp_path / "out" / "launch.sbatch"
    assert result.job_id == "4242" and result.command == ["sbatch", "--parsable", str(script)]
    assert (tmp_path / "sbatch_args").read_text().strip() == f"--parsable {script}"
    lines = script.read_text().splitlines()
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --partition=gpu" in lines
    assert lines[-1] == (f"srun conda run --no-capture-output -n fs2 fairseq2 lm instruction_finetune "
                         f"{tmp_path / 'out'} --preset llama3_1_instruct --no-sweep-dir --config-file {cfg}")
    with pytest.raises(ValueError, match="nproc is for local runs"):
        fs2.launch(cfg, tmp_path / "out", conda_env="fs2", slurm={}, nproc=2)


# ---------------------------------------------------------------------------------------------------- export
def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A random Llama-3.1-shaped model (GQA, llama3 rope scaling) small enough to build in milliseconds."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=256,
                         eos_token_id=265, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0,
                                                         "original_max_position_embeddings": 8192})
    return LlamaForCausalLM(config).eval()


def as_fairseq2(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """What fairseq2 0.4.6 does to an HF Llama checkpoint when it loads one (its convert_llama_checkpoint): rename,
    and reorder q/k rows from HF's half-split rotary layout to interleaved pairs."""
    cfg, out = model.config, {}
    names = {"self_attn.o_proj": "self_attn.output_proj", "mlp.gate_proj": "ffn.gate_proj",
             "mlp.up_proj": "ffn.inner_proj", "mlp.down_proj": "ffn.output_proj",
             "input_layernorm": "self_attn_layer_norm", "post_attention_layernorm": "ffn_layer_norm"}
    for name, tensor in model.state_dict().items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
            tensor = tensor.view(heads, 2, -1, cfg.hidden_size).transpose(1, 2).reshape(-1, cfg.hidden_size)
        name = name.replace("model.layers.", "decoder.layers.").replace("model.norm.", "decoder.layer_norm.")
        name = name.replace("model.embed_tokens.", "decoder_frontend.embed.").replace("lm_head.", "final_proj.")
        for hf, fs in names.items():
            name = name.replace(f".{hf}.", f".{fs}.")
        out[name] = tensor.clone()
    return out


def fs2_step_dir(out: Path, step: int, model: LlamaForCausalLM) -> Path:
    """A checkpoint laid out as fairseq2 0.4.6 writes one: model.pt + the Fairseq2LlamaForCausalLM config.json."""
    step_dir = out / "checkpoints" / f"step_{step}"
    step_dir.mkdir(parents=True)
    torch.save({"model": as_fairseq2(model), "model_key": "model", "fs2": True}, step_dir / "model.pt")
    config = {  # as fairseq2 0.4.6 writes it for this model (convert_to_hg_llama_config; seen in a real run)
        "architectures": ["Fairseq2LlamaForCausalLM"], "bos_token_id": 256, "eos_token_id": 265, "hidden_size": 64,
        "intermediate_size": 256, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "tie_word_embeddings": False, "vocab_size": 512}
    (step_dir / "config.json").write_text(json.dumps(config))
    return step_dir


def test_export_gives_an_hf_checkpoint_with_the_same_outputs(tmp_path):
    model = tiny_llama()
    fs2_step_dir(tmp_path / "run", 2, tiny_llama(seed=1))
    fs2_step_dir(tmp_path / "run", 10, model)  # the newest finished step is exported
    (tmp_path / "run" / "checkpoints" / "step_20.tmp").mkdir()  # unfinished: ignored
    out = fs2.export_checkpoint(tmp_path / "run", tmp_path / "hf", tokenizer_dir=hf_tokenizer())
    assert checkpoint_problems(out) == []
    record = json.loads((out / "coral_train.json").read_text())
    assert record["metrics"]["steps"] == 10 and record["source"].endswith("step_10")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = torch.tensor([[256, 50, 43, 51, 61, 53, 265, 12, 99, 7]])
    with torch.no_grad():
        assert torch.allclose(exported(tokens).logits, model(tokens).logits, atol=1e-5)


def test_export_refuses_what_it_cannot_convert(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished fairseq2 checkpoint"):
        fs2.export_checkpoint(tmp_path, tmp_path / "hf", tokenizer_dir=tmp_path)
    sharded = tmp_path / "run" / "checkpoints" / "step_5"
    sharded.mkdir(parents=True)
    (sharded / "model.0.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"tensor-parallel shards \['model.0.pt'\]"):
        fs2.export_checkpoint(tmp_path / "run", tmp_path / "hf", tokenizer_dir=tmp_path)
    with pytest.raises(ValueError, match="'decoder.pos_encoder.freqs' has no Hugging Face LLaMA counterpart"):
        fs2.hf_llama_weights({"decoder.pos_encoder.freqs": torch.ones(2)}, {"hidden_size": 4,
                                                                              "num_attention_heads": 1})


# ---------------------------------------------------------------------------------------------------- real fairseq2
def run_fs2(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([FS2_PYTHON, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
@real_fairseq2
def test_real_fairseq2_accepts_every_preset_and_rejects_a_typo(tmp_path):
    files = [fs2.write_config(fs2.render_config(p, tmp_path / "data"), tmp_path / f"{p}.yaml") for p in fs2.PRESETS]
    bad = fs2.render_config("dpo_8b", tmp_path / "data", overrides={"criterion.config.betta": 0.2})
    files.append(fs2.write_config(bad, tmp_path / "typo.yaml"))
    script = ROOT / "finetuning" / "trainers" / "validate_fairseq2_config.py"
    done = run_fs2(str(script), *map(str, files), cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]  # the typo file fails, so the whole run does
    results = {Path(r["file"]).stem: r for r in map(json.loads, done.stdout.splitlines())}
    for preset in fs2.PRESETS:
        assert results[preset]["ok"] and results[preset]["fairseq2"] == fs2.FAIRSEQ2_VERSION, results[preset]
        assert results[preset]["lr"] == EXPECTED[preset]["optimizer.config.lr"]
        assert results[preset]["dataset"]["path"] == str((tmp_path / "data" / "fairseq2").resolve())
    assert results["dpo_8b"]["criterion"] == {"name": "dpo", "beta": 0.1, "reference_model": "llama3_1_8b_instruct"}
    assert results["dpo_70b"]["tensor_parallel_size"] == 8 and results["sft_8b"]["num_steps"] == 200
    assert not results["typo"]["ok"] and "criterion.config.betta" in results["typo"]["error"]


@pytest.mark.slow
@real_fairseq2
def test_real_cli_merges_the_file_over_the_preset(tmp_path):
    cfg = fs2.write_config(fs2.render_config("dpo_70b", tmp_path / "data"), tmp_path / "dpo_70b.yaml")
    fairseq2 = str(Path(FS2_PYTHON).parent / "fairseq2")
    done = subprocess.run([fairseq2, "lm", "preference_finetune", "--preset", fs2.BASE_PRESET, "--config-file",
                           str(cfg), "--dump-config"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    dumped = yaml.safe_load(done.stdout)
    assert dumped["criterion"]["config"]["_set_"]["beta"] == 0.1
    assert dumped["optimizer"]["config"]["_set_"]["lr"] == 1e-6
    assert dumped["trainer"]["_set_"]["gradient_accumulation"] == 8
    assert dumped["dataset"]["_set_"]["path"] == str((tmp_path / "data" / "fairseq2").resolve())
    assert dumped["dataset"]["_set_"]["family"] == "generic_preference"  # the preset's keys survive the merge


TINY_CARD = """name: coral_tiny_llama
model_family: llama
model_arch: llama3_1_8b
model_config:
  _set_: {{model_dim: 64, max_seq_len: 8192, num_layers: 2, num_attn_heads: 4, num_key_value_heads: 2,
          ffn_inner_dim: 256, ffn_inner_dim_multiplier: 1.0, ffn_inner_dim_to_multiple: 256, dropout_p: 0.0}}
  vocab_info:
    _set_: {{size: 512, unk_idx: null, bos_idx: 256, eos_idx: 265, pad_idx: 260}}
checkpoint: file://{checkpoint}
tokenizer: file://{tokenizer}
tokenizer_family: llama
use_v2_tokenizer: true
use_eot: true
"""
# Logits of fairseq2's own LLaMA model for a trained checkpoint, computed in the fairseq2 environment.
FS2_LOGITS = """
import sys, torch, yaml
from pathlib import Path
import fairseq2
fairseq2.setup_fairseq2()
from fairseq2.models.llama import LLaMAConfig, LLaMAFactory
from fairseq2.models.sequence import SequenceBatch
from fairseq2.utils.structured import structure
ckpts, step, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
config = structure(yaml.safe_load((ckpts / "model.yaml").read_text())["model_config"]["_set_"], LLaMAConfig)
model = LLaMAFactory(config).create_model()
model.load_state_dict(torch.load(ckpts / f"step_{step}" / "model.pt", weights_only=True)["model"])
tokens = torch.tensor([[256, 50, 43, 51, 61, 53, 265, 12, 99, 7]])
with torch.no_grad():
    torch.save({"tokens": tokens, "logits": model.eval()(SequenceBatch(tokens, None)).logits}, out)
"""


@pytest.mark.slow
@real_fairseq2
def test_real_dpo_run_on_cpu_exports_to_an_equivalent_hf_checkpoint(tmp_path):
    """The dpo_8b config, shrunk to a tiny random Llama on CPU, trained by the real CLI through ``launch``."""
    start = tiny_llama()
    torch.save(start.state_dict(), tmp_path / "hf.pt")  # fairseq2 converts an HF checkpoint when it loads it
    (tmp_path / "tiny.tiktoken").write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n"
                                                    for i in range(256)))  # bytes only: 256 + 256 special tokens
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "tiny.yaml").write_text(TINY_CARD.format(checkpoint=tmp_path / "hf.pt",
                                                                   tokenizer=tmp_path / "tiny.tiktoken"))
    data = tmp_path / "data" / "fairseq2" / "train"
    data.mkdir(parents=True)
    rows = [("2+3=", "5", "6"), ("4*2=", "8", "6"), ("7-1=", "6", "5"), ("9/3=", "3", "4")] * 2
    (data / "train.jsonl").write_text("".join(json.dumps({"src": s, "tgt_chosen": c, "tgt_rejected": r}) + "\n"
                                              for s, c, r in rows))
    cpu = {"trainer.dtype": "float32", "trainer.data_parallelism": "ddp", "trainer.activation_checkpointing": False,
           "criterion.config.reference_model.name": "coral_tiny_llama", "criterion.config.reference_dtype": "float32",
           "regime.num_steps": 2, "regime.checkpoint_every_n_steps": 2, "regime.publish_metrics_every_n_steps": 1,
           "dataset.max_num_tokens": 256, "dataset.max_seq_len": 128, "lr_scheduler.config.num_warmup_steps": 0,
           "optimizer.config.lr": 1e-3, "common.assets.extra_path": str(tmp_path / "cards"),
           "common.metric_recorders.tensorboard.enabled": False}
    config = fs2.render_config("dpo_8b", tmp_path / "data", model="coral_tiny_llama", overrides=cpu)
    cfg = fs2.write_config(config, tmp_path / "dpo.yaml")
    fs2.launch(cfg, tmp_path / "out", python=FS2_PYTHON)
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics" / "train.jsonl").read_text().splitlines()]
    assert [m["Step"] for m in metrics] == [1, 2]
    assert metrics[0]["DPO Loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1

    out = fs2.export_checkpoint(tmp_path / "out", tmp_path / "hf", tokenizer_dir=hf_tokenizer())
    assert checkpoint_problems(out) == []
    (tmp_path / "fs2_logits.py").write_text(FS2_LOGITS)
    done = run_fs2(str(tmp_path / "fs2_logits.py"), str(tmp_path / "out" / "checkpoints"), "2",
                   str(tmp_path / "logits.pt"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = torch.load(tmp_path / "logits.pt")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = exported(reference["tokens"]).logits
        assert torch.allclose(logits, reference["logits"], atol=1e-5)
        assert not torch.allclose(logits, start(reference["tokens"]).logits, atol=1e-5)  # DPO moved the weights
