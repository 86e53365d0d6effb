"""Every YAML config parses and builds; the reference's documented overrides reach the right objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral.errors import DataError
from lightning_modules.datasets import CoralDataModule, ValSetArgs
from lightning_modules.models import InteractionModule
from lightning_modules.trainer import main

ROOT = Path(__file__).resolve().parents[2]


def build(*args: str):
    return main(list(args), run=False)


def test_there_are_configs_to_check(eval_configs):
    names = {p.relative_to(ROOT / "configs").as_posix() for p in eval_configs}
    assert {"ts_math.yaml", "ts_mmlu_pro.yaml", "cot/cot_math.yaml", "cot/cot_mmlu_pro.yaml"} <= names


def test_every_config_builds(eval_config, data_override, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = data_override(eval_config)
    cli = build("--config", str(eval_config), "--trainer.default_root_dir", str(tmp_path), *data)
    assert isinstance(cli.model, InteractionModule) and isinstance(cli.datamodule, CoralDataModule)
    cli.datamodule.setup("validate")
    assert 0 < len(cli.datamodule.examples) <= (cli.datamodule.val_max_instances or 10**9)
    assert cli.model.hparams.max_turns >= 1


def test_cot_configs_are_single_turn_simple_cot(monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = build("--config", "configs/cot/cot_math.yaml")
    assert cli.model.hparams.max_turns == 1
    assert cli.datamodule.val_set.teacher_instruction == cli.datamodule.val_set.student_instruction == "simple_cot"


def test_reference_overrides(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    cli = build(
        "--config", "configs/ts_mmlu_pro.yaml",
        "--model.teacher_model", "/models/a",
        "--model.student_model", "/models/b",
        "--model.teacher_app_name", "8B_grpc",
        "--model.student_app_name", "8B_http",
        "--model.max_turns", "1",
        "--model.sampling_temp", "0.7",
        "--model.sampling_n", "3",
        "--model.max_turn_tokens", "99",
        "--data.val_max_instances", "5",
        "--data.val_set_init_args.file_path", "data/mmlu_pro/test.jsonl",
        "--data.val_set_init_args.teacher_instruction", "simple_cot",
        "--data.val_set_init_args.student_instruction", "assistant_sbs",
        "--trainer.default_root_dir", str(tmp_path / "out"),
    )
    hp = cli.model.hparams
    assert (hp.teacher_model, hp.student_model) == ("/models/a", "/models/b")
    assert (hp.teacher_app_name, hp.student_app_name) == ("8B_grpc", "8B_http")
    assert (hp.max_turns, hp.sampling_temp, hp.sampling_n, hp.max_turn_tokens) == (1, 0.7, 3, 99)
    assert cli.datamodule.val_max_instances == 5
    assert cli.datamodule.val_set == ValSetArgs("data/mmlu_pro/test.jsonl", "simple_cot", "assistant_sbs")
    assert cli.trainer.default_root_dir == str(tmp_path / "out")


def test_exp_name_sets_the_results_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("EXP_NAME", str(tmp_path / "exp"))
    cli = build("--config", "configs/ts_math.yaml")
    assert cli.trainer.default_root_dir == str(tmp_path / "exp")


def test_a_wrong_key_fails_at_parse_time(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        build("--config", "configs/ts_math.yaml", "--model.max_turnz", "3")
    assert "max_turnz" in capsys.readouterr().err


def test_an_unknown_task_or_protocol_names_the_known_ones(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(KeyError, match="did you mean math"):
        _ = build("--config", "configs/ts_math.yaml", "--data.task", "maths").datamodule.task
    with pytest.raises(ValueError, match="did you mean coral"):  # jsonargparse reports it while instantiating
        build("--config", "configs/ts_math.yaml", "--model.protocol", "koral")


def test_malformed_data_line_fails_naming_file_line_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    cli = build("--config", "configs/ts_math.yaml", "--data.val_set_init_args.file_path", str(bad))
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: field 'answer'"):
        cli.datamodule.setup("validate")


def test_wandb_goes_offline_without_a_key(monkeypatch, tmp_path):
    from lightning_modules.loggers import wandb_offline

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_offline() is True
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_offline() is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline() is True
