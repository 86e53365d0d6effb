"""Dataset files for TRL and fairseq2 from real result stores: fields, the real SmolLM2 chat template, atomic
writes, the completeness check, the command lines, and one real TRL DPO / SFT training step on the output."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from coral.backends.models import resolve
from coral.conversation.protocols import agent_view
from coral.records import ConversationRecord, Turn
from coral.store import ResultStore
from coral.synthesis import formats
from coral.synthesis.formats import (
    COUNTS,
    FAIRSEQ2_TRAIN,
    PROVENANCE,
    SETTINGS,
    TRL_TRAIN,
    dataset_is_complete,
    load_chat_tokenizer,
)
from coral.synthesis.preferences import PairSettings
from coral.synthesis.sft import SFTSettings
from finetuning.data_creation import build_dpo as build_dpo_cli
from finetuning.data_creation import build_sft as build_sft_cli
from finetuning.data_creation.build_dpo import build_dpo
from finetuning.data_creation.build_sft import build_sft

MODEL = "SmolLM2-135M-Instruct"
SYSTEM = {"student": "You are a careful student.", "teacher": "You are a patient teacher."}


def turn(index: int, grade: str, text: str, agreement: bool = False) -> Turn:
    return Turn(index=index, speaker="teacher" if index % 2 else "student", text=text, seed=index,
                belief={"c": "4", "w": "5"}[grade], correct=grade == "c", agreement=agreement)


def tree(example_id: str, sample_index: int) -> ConversationRecord:
    """Two levels of three candidates; the second level's continued turn agrees correctly with the first."""
    tag = f"({example_id}, sample {sample_index})"
    first = turn(1, "c", f"2 + 2 = 4 {tag}")
    first.siblings = [turn(1, "w", f"2 + 2 = 5 {tag}"), turn(1, "w", f"It is 5 {tag}")]
    second = turn(2, "c", f"I agree, 4 {tag}", agreement=True)
    second.siblings = [turn(2, "w", f"No, 5 {tag}"), turn(2, "c", f"Yes: 4 {tag}")]
    question = Turn(index=0, speaker="student", text=f"What is 2 + 2? {example_id}", generated=False)
    return ConversationRecord(example_id=example_id, sample_index=sample_index, task="math", run_seed=1,
                              config_hash="h", protocol="coral", agents={"student": MODEL, "teacher": MODEL},
                              turns=[question, first, second], stop_reason="agreement", max_turns=4, gold="4",
                              system_prompts=dict(SYSTEM))


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tokenizer = load_chat_tokenizer(MODEL)
    assert tokenizer.name_or_path == str(resolve(MODEL))  # the converted checkpoint that evaluation also loads
    return tokenizer


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    store = ResultStore(root)
    for example_id in ("p1", "p2"):
        for sample_index in range(2):
            store.append(tree(example_id, sample_index))
    return root


def test_dpo_dataset_has_both_formats_rendered_by_the_real_chat_template(results: Path, tmp_path: Path,
                                                                         tokenizer: Any) -> None:
    settings = PairSettings(max_pairs_per_level=2, max_pairs_per_problem=5, seed=3)
    counts = build_dpo([results], tmp_path / "dpo", settings, tokenizer)
    out = tmp_path / "dpo"
    trl, fs2, provenance = rows(out / TRL_TRAIN), rows(out / FAIRSEQ2_TRAIN), rows(out / PROVENANCE)
    assert counts["pairs"] == len(trl) == len(fs2) == len(provenance) == 2 * 5
    assert counts["records_read"] == counts["records"] == 4 and counts["duplicate_records"] == 0
    records = {(r.example_id, r.sample_index): r for r in (tree(p, s) for p in ("p1", "p2") for s in range(2))}
    for trl_row, fs2_row, origin in zip(trl, fs2, provenance):
        assert set(trl_row) == {"prompt", "chosen", "rejected"}
        assert set(fs2_row) == {"src", "tgt_chosen", "tgt_rejected"}
        record = records[(origin["example_id"], origin["sample_index"])]
        speaker = origin["speaker"]
        assert trl_row["prompt"] == agent_view(SYSTEM[speaker], speaker, record.turns[: origin["turn"]])
        assert trl_row["chosen"] == [{"role": "assistant", "content": fs2_row["tgt_chosen"]}]
        assert trl_row["rejected"] == [{"role": "assistant", "content": fs2_row["tgt_rejected"]}]
        level = [record.turns[origin["turn"]], *record.turns[origin["turn"]].siblings]
        assert fs2_row["tgt_chosen"] in {t.text for t in level if t.correct}
        assert fs2_row["tgt_rejected"] in {t.text for t in level if not t.correct}
        assert fs2_row["src"] == tokenizer.apply_chat_template(trl_row["prompt"], add_generation_prompt=True,
                                                               tokenize=False)
        assert fs2_row["src"].startswith(f"<|im_start|>system\n{SYSTEM[speaker]}<|im_end|>\n")
        assert fs2_row["src"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<|im_end|>" not in fs2_row["tgt_chosen"] + fs2_row["tgt_rejected"]  # fairseq2 appends EOS itself

    info = json.loads((out / SETTINGS).read_text())
    assert info["kind"] == "dpo" and info["settings"] == asdict(settings) and info["seed"] == 3
    assert info["sources"] == [{"folder": str(results), "records": 4}]
    assert info["coral_version"] == formats.coral_version() != "unknown"
    assert info["tokenizer"] == tokenizer.name_or_path and len(info["chat_template_sha256"]) == 64
    written = json.loads((out / COUNTS).read_text())
    assert written == counts and written["files"] == {TRL_TRAIN: 10, FAIRSEQ2_TRAIN: 10, PROVENANCE: 10}
    assert dataset_is_complete(out) and dataset_is_complete(out, settings)
    assert not dataset_is_complete(out, PairSettings(seed=4))


def test_sft_dataset_is_prompt_completion_for_trl_and_src_tgt_for_fairseq2(results: Path, tmp_path: Path,
                                                                         tokenizer: Any) -> None:
    counts = build_sft([results], tmp_path / "sft", SFTSettings(mode="agreement"), tokenizer)
    trl, fs2 = rows(tmp_path / "sft" / TRL_TRAIN), rows(tmp_path / "sft" / FAIRSEQ2_TRAIN)
    assert counts["examples"] == len(trl) == len(fs2) == 4 * 2  # every generated turn of the 4 agreeing conversations
    for trl_row, fs2_row in zip(trl, fs2):
        assert set(trl_row) == {"prompt", "completion"} and set(fs2_row) == {"src", "tgt"}
        assert trl_row["completion"] == [{"role": "assistant", "content": fs2_row["tgt"]}]
        assert fs2_row["src"] == tokenizer.apply_chat_template(trl_row["prompt"], add_generation_prompt=True,
                                                               tokenize=False)
    assert dataset_is_complete(tmp_path / "sft", SFTSettings(mode="agreement"))
    assert not dataset_is_complete(tmp_path / "sft", SFTSettings(mode="all"))


def test_same_inputs_give_byte_identical_datasets(results: Path, tmp_path: Path, tokenizer: Any) -> None:
    for name in ("a", "b"):
        build_dpo([results], tmp_path / name, PairSettings(max_pairs_per_level=1), tokenizer)
    for name in (TRL_TRAIN, FAIRSEQ2_TRAIN, PROVENANCE, SETTINGS, COUNTS):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_damaged_or_missing_datasets_are_not_complete(results: Path, tmp_path: Path, tokenizer: Any) -> None:
    out = tmp_path / "dpo"
    assert not dataset_is_complete(out)
    build_dpo([results], out, PairSettings(), tokenizer)
    assert dataset_is_complete(out)
    fs2 = out / FAIRSEQ2_TRAIN
    whole = fs2.read_bytes()
    fs2.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 1])  # one line short
    assert not dataset_is_complete(out)
    fs2.write_bytes(whole[:-5])  # torn last line
    assert not dataset_is_complete(out)
    fs2.write_bytes(whole)
    assert dataset_is_complete(out)
    (out / COUNTS).unlink()
    assert not dataset_is_complete(out)


def test_a_failed_write_keeps_the_previous_dataset(results: Path, tmp_path: Path, tokenizer: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "dpo"
    old = PairSettings(seed=1)
    build_dpo([results], out, old, tokenizer)
    real_write = formats._write_text

    def dies_at_counts(path: Path, text: str) -> None:
        if path.name == COUNTS:
            raise KeyboardInterrupt  # a kill after the data files were written
        real_write(path, text)

    monkeypatch.setattr(formats, "_write_text", dies_at_counts)
    with pytest.raises(KeyboardInterrupt):
        build_dpo([results], out, PairSettings(seed=2), tokenizer)
    with pytest.raises(KeyboardInterrupt):
        build_dpo([results], tmp_path / "fresh", PairSettings(seed=2), tokenizer)
    assert dataset_is_complete(out, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo"]  # no partial dataset, no temp folder left


def test_command_lines_write_the_same_datasets(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    counts = build_dpo_cli.main(["--results", str(results), str(results), "--out", str(tmp_path / "dpo"),
                                 "--model", MODEL, "--max_pairs_per_level", "1", "--agree_wrong_penalty", "0.1",
                                 "--seed", "5"])
    assert json.loads(capsys.readouterr().out)["pairs"] == counts["pairs"] == 8
    assert counts["records_read"] == 8 and counts["duplicate_records"] == 4
    expected = PairSettings(max_pairs_per_level=1, agree_wrong_penalty=0.1, seed=5)
    assert dataset_is_complete(tmp_path / "dpo", expected)
    counts = build_sft_cli.main(["--results", str(results), "--out", str(tmp_path / "sft"), "--model", MODEL,
                                 "--mode", "correct", "--max_per_problem", "3"])
    assert counts["examples"] == 2 * 3 and counts["dropped"]["problem_cap"] == 2
    assert dataset_is_complete(tmp_path / "sft", SFTSettings(mode="correct", max_per_problem=3))


def tiny_llama(tokenizer: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config)


CPU_ARGS = {"max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True, "bf16": False,
            "gradient_checkpointing": False, "save_strategy": "no", "logging_steps": 1, "max_length": 256}


def load_train(out: Path, tmp_path: Path) -> Any:
    from datasets import load_dataset

    return load_dataset("json", data_files=str(out / TRL_TRAIN), split="train", cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
def test_trl_dpo_trainer_trains_a_step_on_the_dataset(results: Path, tmp_path: Path, tokenizer: Any) -> None:
    from trl import DPOConfig, DPOTrainer

    build_dpo([results], tmp_path / "dpo", PairSettings(max_pairs_per_problem=2), tokenizer)
    dataset = load_train(tmp_path / "dpo", tmp_path)
    assert dataset.num_rows == 4 and set(dataset.column_names) == {"prompt", "chosen", "rejected"}
    model = tiny_llama(tokenizer)
    args = DPOConfig(output_dir=str(tmp_path / "run"), **CPU_ARGS)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), processing_class=tokenizer, args=args,
                         train_dataset=dataset)
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)


@pytest.mark.slow
def test_trl_sft_trainer_trains_a_step_with_loss_on_the_completion(results: Path, tmp_path: Path,
                                                                   tokenizer: Any) -> None:
    from trl import SFTConfig, SFTTrainer

    build_sft([results], tmp_path / "sft", SFTSettings(mode="correct", max_per_problem=2), tokenizer)
    dataset = load_train(tmp_path / "sft", tmp_path)
    assert dataset.num_rows == 4 and set(dataset.column_names) == {"prompt", "completion"}
    trainer = SFTTrainer(model=tiny_llama(tokenizer), processing_class=tokenizer, train_dataset=dataset,
                         args=SFTConfig(output_dir=str(tmp_path / "run"), **CPU_ARGS))
    for row in trainer.train_dataset:  # the loss is on the reply and its end-of-turn token only
        trained = [token for token, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert tokenizer.decode(trained) == row["completion"][0]["content"] + "<|im_end|>\n"
    result = trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(result.training_loss)
