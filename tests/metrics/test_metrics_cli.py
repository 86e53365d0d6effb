"""``python -m coral.metrics`` and ``write_metrics`` on a real results folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coral import records
from coral.metrics import write_metrics
from coral.metrics.__main__ import main

LIBS = Path(records.__file__).resolve().parents[1]  # coral is a namespace package: no coral.__file__


def write_store(root: Path, records_by_file: dict[str, list]) -> None:
    for name, file_records in records_by_file.items():
        with open(root / name, "w", encoding="utf-8") as handle:
            for record in file_records:
                handle.write(json.dumps(record.to_dict()) + "\n")


@pytest.fixture
def store(tmp_path, build):
    write_store(
        tmp_path,
        {
            "conversations.jsonl": [
                build("A", "B", max_turns=2, example_id="r1"),  # ever right, no agreement
                build("B", "A", {"belief": "A", "agreement": True}, example_id="r2"),  # agreed, right
            ],
            # another rank's file, plus a duplicate key that reading drops
            "conversations.rank1.jsonl": [
                build("B", "C", max_turns=2, example_id="r4"),
                build("B", "C", max_turns=2, example_id="r1"),
            ],
        },
    )
    return tmp_path


def test_module_cli_writes_metrics_json(store):
    env = {**os.environ, "PYTHONPATH": str(LIBS)}
    done = subprocess.run(
        [sys.executable, "-m", "coral.metrics", str(store)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads((store / "metrics.json").read_text())
    # r1, r2, r4 (the duplicate r1 is dropped): agreement correctness 1/3, ever correct 2/3
    assert metrics["n_conversations"] == 3
    assert metrics["agreement_correctness"] == pytest.approx(1 / 3)
    assert metrics["ever_correct"] == pytest.approx(2 / 3)
    assert "t_len" not in metrics
    assert done.stdout.splitlines()[2].split() == ["agreement_correctness", "0.3333"]  # headline first
    text = (store / "metrics.json").read_text()
    assert text == json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in store.iterdir()) == [
        "conversations.jsonl",
        "conversations.rank1.jsonl",
        "metrics.json",
    ]  # no temporary file left behind


def test_compat_flag(store, capsys):
    assert main([str(store), "--compat"]) == 0
    metrics = json.loads((store / "metrics.json").read_text())
    assert metrics["final_success_rate"] == pytest.approx(2 / 3)  # compat: ever correct (r1, r2)
    assert metrics["t_len"] == 10.0
    assert "agreement_correctness" in capsys.readouterr().out


def test_write_metrics_returns_what_it_writes(store):
    metrics = write_metrics(store)
    assert json.loads((store / "metrics.json").read_text()) == metrics
    assert metrics["final_success_rate"] == pytest.approx(1 / 3)  # corrected: only r2 ends right


def test_folder_without_conversations_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no conversations*.jsonl results file" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(FileNotFoundError):
        write_metrics(tmp_path / "missing")


def test_bad_record_line_is_reported_with_file_and_line(tmp_path, capsys):
    (tmp_path / "conversations.jsonl").write_text('{"not": "a record"}\n')
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "conversations.jsonl, line 1" in capsys.readouterr().err
