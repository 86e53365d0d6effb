"""trainer.py for people: data and config mistakes are one line naming the file, line or option (exit status 2),
the reference's three-file form parses, and logs go inside the run's folder. No model is loaded here."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import get_task
from lightning_modules.trainer import cli, main

ROOT = Path(__file__).resolve().parents[2]
MMLU = ROOT / "data" / "mmlu_pro" / "test.jsonl"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("EXP_NAME", raising=False)


def run(tmp_path: Path, *overrides: str) -> int:
    """``trainer.py validate`` on MMLU-Pro, in-process; every case here fails before a model is loaded."""
    args = ["validate", "--config", "configs/ts_mmlu_pro.yaml", "--trainer.default_root_dir", str(tmp_path / "run")]
    return cli(args + list(overrides))


def error_line(capsys) -> str:
    """The one error line; a traceback or a multi-line report fails the test."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Given value" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_invalid_utf8_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(MMLU.read_bytes().splitlines(keepends=True)[0] + '{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl, line 2: not valid UTF-8"):
        get_task("mmlu_pro").read(bad)
    assert run(tmp_path, "--data.val_set_init_args.file_path", str(bad)) == 2
    assert error_line(capsys).startswith(f"error: {bad}, line 2: not valid UTF-8")


def test_invalid_utf8_in_a_csv_loader_names_the_line(tmp_path):
    """Loaders of other formats get the same report from the shared ``reading`` context (here GPQA's CSV)."""
    bad = tmp_path / "gpqa.csv"
    good = (ROOT / "tests" / "fixtures" / "gpqa" / "gpqa_synthetic.csv").read_bytes().splitlines(keepends=True)
    bad.write_bytes(b"".join(good[:3]) + b"\xff" + b"".join(good[3:]))
    with pytest.raises(DataError, match=r"gpqa\.csv, line 4: not valid UTF-8"):
        get_task("gpqa").read(bad)


def test_a_missing_data_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert run(tmp_path, "--data.val_set_init_args.file_path", str(missing)) == 2
    assert error_line(capsys) == f"error: {missing}: No such file or directory"


def test_a_malformed_line_after_the_first_n_still_stops_the_run(tmp_path, capsys):
    late = tmp_path / "late.jsonl"
    late.write_text("".join(MMLU.read_text().splitlines(keepends=True)[:3]) + '{"question": 1}\n')
    assert run(tmp_path, "--data.val_max_instances", "1", "--data.val_set_init_args.file_path", str(late)) == 2
    assert error_line(capsys) == f"error: {late}, line 4: field 'question': expected str, got int"
    assert not (tmp_path / "run" / "conversations.jsonl").exists()


def test_a_bad_count_names_that_one_option(tmp_path, capsys):
    assert run(tmp_path, "--model.max_turns", "-2") == 2
    assert error_line(capsys) == "error: model.max_turns: must be >= 1, got -2"


@pytest.mark.parametrize(("override", "expected"), [
    (["--data.task", "maths"], "error: unknown task 'maths'; did you mean math?"),
    (["--model.protocol", "koral"], "error: unknown protocol 'koral'; did you mean coral?"),
    (["--data.val_set_init_args.student_instruction", "simple_cott"],
     "error: unknown instruction style 'simple_cott'; did you mean simple_cot?"),
])
def test_an_unknown_name_is_one_line_with_the_closest(tmp_path, capsys, override, expected):
    assert run(tmp_path, *override) == 2
    assert error_line(capsys).startswith(expected)


@pytest.mark.parametrize(("typo", "meant"), [
    ("--model.max_turnz", "--model.max_turns"),
    ("--model.extractor.mode_", "--model.extractor.mode"),
    ("--data.val_max_instance", "--data.val_max_instances"),
    ("--trainer.default_rootdir", "--trainer.default_root_dir"),
])
def test_a_misspelt_option_suggests_the_closest(tmp_path, capsys, typo, meant):
    with pytest.raises(SystemExit) as exit_:
        run(tmp_path, typo, "2")
    assert exit_.value.code == 2
    line = error_line(capsys)
    assert line.startswith(f"error: option {typo} is not accepted; did you mean {meant}")


def test_the_reference_three_file_form_parses(tmp_path):
    cli_ = main([
        "--trainer", "configs/common/api_inference_trainer.yaml",
        "--model", "configs/common/ts_interaction_model.yaml",
        "--config", "configs/ts_mmlu_pro.yaml",
        "--model.max_turns", "3",
    ], run=False)
    assert cli_.datamodule.task_name == "mmlu_pro" and cli_.datamodule.val_max_instances == 4
    assert cli_.model.hparams.max_turns == 3 and cli_.model.hparams.max_turn_tokens == 96
    assert cli_.model.extractor_config.mode == "rules_then_judge"
    assert cli_.trainer.default_root_dir == "results/ts_mmlu_pro"


def test_csv_logs_go_inside_the_run_folder(tmp_path, monkeypatch):
    built = main(["--config", "configs/ts_mmlu_pro.yaml", "--trainer.default_root_dir", str(tmp_path / "a")], run=False)
    assert Path(built.trainer.logger.log_dir).is_relative_to(tmp_path / "a" / "logs")
    monkeypatch.setenv("EXP_NAME", str(tmp_path / "exp"))
    built = main(["--config", "configs/ts_mmlu_pro.yaml"], run=False)
    assert Path(built.trainer.logger.log_dir).is_relative_to(tmp_path / "exp" / "logs")
