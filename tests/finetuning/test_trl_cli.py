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
                      "--settings.max_steps", "200"])
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


def tiny_model(folder: Path) -> Path:
    """A 2-layer Llama built from a config, with a byte-level tokenizer and a chat template: no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {char: i for i, char in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab.update({"<|im_start|>": len(vocab), "<|im_end|>": len(vocab) + 1})
    core = Tokenizer(models.BPE(vocab, merges=[]))
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    core.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|im_end|>",
                            chat_template=template).save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=len(vocab) - 1,
                         pad_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)  # float32, like most released checkpoints' sources
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_a_tiny_model_trains_and_saves_in_the_devices_dtype(tmp_path, method):
    """On this machine's device (CPU here: float32; on CUDA: bfloat16), 2 steps, saved and reloaded.

    On a GPU machine: ``python -m pytest -q tests/finetuning/test_trl_cli.py -k dtype`` checks the CUDA default.
    """
    import json

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from finetuning.trainers.trl_trainer import train, training_device

    def message(role: str, text: str) -> list[dict[str, str]]:
        return [{"role": role, "content": text}]

    rows = [{"prompt": message("user", f"{i}+{i}?"), "chosen": message("assistant", str(2 * i)),
             "rejected": message("assistant", str(2 * i + 1))} for i in range(4)]
    if method == "sft":
        rows = [{"prompt": row["prompt"], "completion": row["chosen"]} for row in rows]
    (tmp_path / "data" / "trl").mkdir(parents=True)
    (tmp_path / "data" / "trl" / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = TrainSettings(method=method, lora=method == "dpo", max_steps=2, batch_size=2, max_length=32,
                             learning_rate=1e-4)
    result = train(tiny_model(tmp_path / "tiny"), tmp_path / "data", tmp_path / "out", settings)
    expected = weight_dtype(None, training_device())
    with safe_open(str(result / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {expected}
    assert AutoModelForCausalLM.from_pretrained(result).dtype == expected
    assert json.loads((result / "coral_train.json").read_text())["dtype"] == str(expected).removeprefix("torch.")
