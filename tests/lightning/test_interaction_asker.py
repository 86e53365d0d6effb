"""The interaction model's ``asker`` option: who opens the conversation (the reference's teacher-first variant)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_modules.models import InteractionModule
from lightning_modules.trainer import main

ROOT = Path(__file__).resolve().parents[2]


def build(*args: str):
    return main(["--config", "configs/ts_math.yaml", *args], run=False)


def config_hash(cli, drop: str | None = None) -> str:
    """The module's config hash without a trainer attached; ``drop`` removes one hyperparameter first."""
    hparams = {key: value for key, value in cli.model.hparams.items() if key != drop}
    module = SimpleNamespace(
        hparams=hparams, extractor_config=cli.model.extractor_config,
        trainer=SimpleNamespace(datamodule=cli.datamodule), run_seed=333,
    )
    return InteractionModule.config_hash(module)


def test_asker_is_a_typed_option_and_teacher_poses_the_problem(monkeypatch):
    monkeypatch.chdir(ROOT)
    default = build()
    protocol = default.model.protocol
    assert (default.model.hparams.asker, protocol.asker, protocol.posed) == ("student", "student", False)
    teacher = build("--model.asker", "teacher")
    protocol = teacher.model.protocol
    assert (protocol.asker, protocol.posed) == ("teacher", True)
    # a default run's records keep their config hash (a folder written before the option existed resumes);
    # a teacher-first run is another configuration
    assert config_hash(default) == config_hash(default, drop="asker")
    assert config_hash(teacher) != config_hash(default)


def test_an_unknown_asker_fails_at_parse_time(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        build("--model.asker", "nobody")
    assert "asker" in capsys.readouterr().err
