"""The TRL trainer's command line and dtype choice, without training (the real runs are in test_trl_trainer.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetuning.trainers import trl_trainer
from finetuning.trainers.trl_trainer import TrainSettings, weight_dtype


def test_the_readme_command_line_reaches_train_with_typed_settings(monkeypatch, tmp_path):
    """README: ``python -m finetuning.trainers.trl_trainer --model M --data D --out O --settings.method dpo ...``."""
    calls = []
    monkeypatch.setattr(trl_trainer, "train", lambda *args: calls.append(args) or Path(args[2]) / "checkpoint")
    trl_trainer.main(["--model", "SmolLM2-135M-Instruct", "--data", str(tmp_path / "dpo"),
                      "--out", str(tmp_path / "out"), "--settings.method", "sft", "--settings.lora", "true",
                      "--settings.max_steps", "200"])  # fmt: skip
    (model, data, out, settings), = calls
    assert (model, data, out) == ("SmolLM2-135M-Instruct", tmp_path / "dpo", tmp_path / "out")
    assert settings == TrainSettings(method="sft", lora=True, max_steps=200)


def test_weights_are_bf16_on_cuda_and_fp32_on_cpu_unless_chosen():
    assert weight_dtype(None, "cpu") is torch.float32
    assert weight_dtype(None, "cuda") is torch.bfloat16
    assert weight_dtype("float32", "cuda") is torch.float32
    assert weight_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="TrainSettings.dtype must be one of float32, bfloat16"):
        TrainSettings(dtype="float16")
