"""The TRL trainer on the real SmolLM2-135M-Instruct: DPO and SFT with LoRA, resume, and the completion marker."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import TrainerCallback

from coral.backends import ChatRequest, EmbeddedBackend, models
from coral.sampling import SamplingParams
from finetuning.trainers.trl_trainer import (
    MARKER,
    TrainSettings,
    checkpoint_is_complete,
    checkpoint_problems,
    file_sha256,
    read_rows,
    train,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "SmolLM2-135M-Instruct"
PAIRS = [
    ("What is 2+3?", "2+3 = 5. The answer is 5.", "2+3 = 6. The answer is 6."),
    ("What is 4*2?", "4*2 = 8. The answer is 8.", "4*2 = 6. The answer is 6."),
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Lyon."),
    ("Is 7 a prime number?", "Yes, 7 is prime.", "No, 7 is not prime."),
]
# Tiny runs: 2 pairs (or rows) per step, 2 steps; lr 1e-4 so two LoRA steps visibly move the merged weights.
FAST = dict(max_steps=2, batch_size=2, max_length=256, learning_rate=1e-4)


def system(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}]


def write_jsonl(folder: Path, rows: list[dict]) -> Path:
    (folder / "trl").mkdir(parents=True, exist_ok=True)
    path = folder / "trl" / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def dpo_rows() -> list[dict]:
    return [{"prompt": system(q), "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for q, c, r in PAIRS]


def sft_rows() -> list[dict]:
    """Both SFT shapes in one file: prompt/completion rows and a messages row."""
    rows = [{"prompt": system(q), "completion": [{"role": "assistant", "content": c}]} for q, c, _ in PAIRS[:3]]
    q, c, _ = PAIRS[3]
    return rows + [{"messages": [*system(q), {"role": "assistant", "content": c}], "id": "extra keys are ignored"}]


def marker(directory: Path) -> dict:
    return json.loads((directory / MARKER).read_text())


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


class SimulatedKill(Exception):
    pass


class KillAfterFirstSave(TrainerCallback):
    """Stands in for a killed job: stops the run right after TRL saved checkpoint-1."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 1:
            raise SimulatedKill("simulated kill")


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory) -> tuple[Path, Path, TrainSettings]:
    root = tmp_path_factory.mktemp("dpo")
    data = write_jsonl(root / "data", dpo_rows())
    settings = TrainSettings(method="dpo", lora=True, save="both", seed=3, **FAST)
    return data, train(MODEL, data, root / "out", settings), settings


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> tuple[Path, Path]:
    """SFT killed after step 1 (TRL checkpoint saved), then resumed to step 2 by calling train again."""
    root = tmp_path_factory.mktemp("sft")
    data = write_jsonl(root / "data", sft_rows())
    settings = TrainSettings(method="sft", lora=True, save="merged", save_steps=1, seed=3, **FAST)
    with pytest.raises(SimulatedKill):
        train(MODEL, data, root / "out", settings, callbacks=[KillAfterFirstSave()])
    assert (root / "out" / "trainer" / "checkpoint-1" / "trainer_state.json").is_file()
    assert not checkpoint_is_complete(root / "out" / "checkpoint")
    with pytest.raises(ValueError, match="unfinished run with a different settings"):
        train(MODEL, data, root / "out", replace(settings, learning_rate=1e-3))
    return root / "out", train(MODEL, data, root / "out", settings)


def test_dpo_with_lora_trains_and_writes_complete_results(dpo_run):
    data, checkpoint, settings = dpo_run
    out = checkpoint.parent
    assert checkpoint == out / "checkpoint"
    assert checkpoint_problems(checkpoint) == [] and checkpoint_problems(out / "adapter") == []
    record = marker(checkpoint)
    assert record["kind"] == "merged" and marker(out / "adapter")["kind"] == "adapter"
    assert record["metrics"]["steps"] == 2 and record["rows"] == 4
    assert math.isfinite(record["metrics"]["final_loss"]) and record["metrics"]["resumed_from"] is None
    assert record["data_sha256"] == file_sha256(data / "trl" / "train.jsonl")
    assert record["settings"]["beta"] == 0.1 and record["settings"]["lora_r"] == 8
    losses = [line["loss"] for line in log_lines(out) if "loss" in line]
    # Step 1: LoRA's B starts at zero, so the policy equals the adapter-disabled reference and the loss is ln 2.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert len(losses) == 2 and losses[1] != losses[0]
    assert not (out / "trainer").exists()  # TRL's resume checkpoints are removed once the result is complete
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_merged_weights_differ_from_the_base_model(dpo_run):
    _, checkpoint, _ = dpo_run
    key = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as trained, safe_open(
        str(models.resolve(MODEL) / "model.safetensors"), "pt"
    ) as base:
        assert set(trained.keys()) == set(base.keys())  # merged: no lora_A / lora_B left
        delta = (trained.get_tensor(key) - base.get_tensor(key)).abs().max().item()
    assert 0 < delta < 0.1


@pytest.mark.parametrize("which", ["dpo", "sft"])
def test_trained_checkpoint_answers_in_the_embedded_engine(which, dpo_run, sft_run):
    checkpoint = dpo_run[1] if which == "dpo" else sft_run[1]
    backend = EmbeddedBackend(str(checkpoint))
    greedy = SamplingParams(temperature=0.0, max_tokens=4, seed=0)
    [completion] = asyncio.run(backend.chat(ChatRequest(system("What is 2+3?"), greedy)))
    assert 1 <= completion.completion_tokens <= 4 and completion.text.strip()
    assert completion.prompt_tokens > 5


def test_sft_resumes_a_killed_run(sft_run):
    out, checkpoint = sft_run
    record = marker(checkpoint)
    assert checkpoint_is_complete(checkpoint) and record["kind"] == "merged"
    assert record["metrics"]["steps"] == 2 and record["metrics"]["resumed_from"].endswith("checkpoint-1")
    assert math.isfinite(record["metrics"]["final_loss"])
    assert [line["step"] for line in log_lines(out) if "loss" in line] == [1, 2]


def test_training_again_reuses_the_result_or_refuses_other_settings(dpo_run):
    data, checkpoint, settings = dpo_run
    before = (checkpoint / MARKER).stat().st_mtime_ns
    assert train(MODEL, data, checkpoint.parent, settings) == checkpoint
    assert (checkpoint / MARKER).stat().st_mtime_ns == before
    changed = replace(settings, beta=0.2)
    with pytest.raises(ValueError, match="different settings"):
        train(MODEL, data, checkpoint.parent, changed)


def test_folder_without_marker_or_with_broken_weights_is_not_complete(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer.json").write_text("{}")
    save_file({"w": torch.ones(64, 64)}, str(folder / "model.safetensors"))
    assert "missing or unreadable" in checkpoint_problems(folder)[0]
    (folder / MARKER).write_text(json.dumps({"kind": "merged", "metrics": {}}))
    assert checkpoint_is_complete(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])  # a save cut short
    assert checkpoint_problems(folder) == [f"{folder / 'model.safetensors'}: missing or not a safetensors file"]
    (folder / MARKER).write_text("{not json")
    assert not checkpoint_is_complete(folder)


def test_rows_are_normalised_and_bad_rows_name_file_line_and_field(tmp_path):
    data = write_jsonl(tmp_path, sft_rows())
    rows = read_rows(data / "trl" / "train.jsonl", "sft")
    assert rows[3] == {"prompt": system(PAIRS[3][0]), "completion": [{"role": "assistant", "content": PAIRS[3][1]}]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dpo_rows()[0]) + "\n" + json.dumps({"prompt": system("q"), "chosen": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: field 'chosen' must be a non-empty list"):
        read_rows(bad, "dpo")
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'messages' must end with an assistant message"):
        read_rows(bad, "sft")
    bad.write_text(json.dumps({"prompt": [{"role": "robot", "content": "x"}], "completion": []}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field prompt\[0\] must be"):
        read_rows(bad, "sft")


def test_settings_are_validated_by_field_name():
    with pytest.raises(ValueError, match="TrainSettings.method"):
        TrainSettings(method="ppo")
    with pytest.raises(ValueError, match="needs lora=True"):
        TrainSettings(lora=False, save="both")
    with pytest.raises(ValueError, match="TrainSettings.batch_size"):
        TrainSettings(batch_size=0)
    assert TrainSettings(method="dpo", lora=False).lr == 1e-6 and TrainSettings(method="sft", lora=False).lr == 1e-7
