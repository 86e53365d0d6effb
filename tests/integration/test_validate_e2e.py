"""``trainer.py validate`` end to end on the real embedded model: records, metrics, determinism, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coral.store import read_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = 4


def command(results: Path) -> list[str]:
    """A small but complete run: 4 MMLU-Pro questions, 2 turns each, short turns, judge extraction."""
    return [
        sys.executable, "lightning_modules/trainer.py", "validate",
        "--config", "configs/ts_mmlu_pro.yaml",
        "--data.val_max_instances", str(EXAMPLES),
        "--model.max_turns", "2",
        "--model.max_turn_tokens", "24",
        "--model.extractor.max_tokens", "8",
        "--model.max_n_processes", "1",
        "--trainer.default_root_dir", str(results),
        "--trainer.logger.init_args.save_dir", str(results / "logs"),
    ]


def validate(results: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command(results), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def comparable(results: Path) -> dict:
    """Records keyed by (example, sample) without the one field that measures wall time."""
    out = {}
    for record in read_records(results):
        data = record.to_dict()
        for turn in data["turns"]:
            turn.pop("latency_s")
        out[record.key] = data
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    results = tmp_path_factory.mktemp("first")
    return results, validate(results)


def test_run_writes_records_metrics_config_and_summary(first_run):
    results, done = first_run
    records = read_records(results)
    assert sorted(r.example_id for r in records) == sorted({r.example_id for r in records})
    assert len(records) == EXAMPLES
    for record in records:
        assert record.turns[0].text.startswith("I'm trying to solve this problem:")
        generated = record.turns[1:]
        assert 1 <= len(generated) <= 2 and record.stop_reason in ("agreement", "max_turns")
        for turn in generated:
            assert turn.text and turn.usage.completion_tokens > 0 and turn.usage.prompt_tokens > 0
            assert turn.belief_method in ("rule", "judge") and isinstance(turn.correct, bool)
            assert turn.seed is not None and turn.error is None
    metrics = json.loads((results / "metrics.json").read_text())
    assert metrics["n_conversations"] == EXAMPLES
    assert 0.0 <= metrics["agreement_correctness"] <= metrics["agreement"] <= 1.0
    assert metrics["total_turns"] == pytest.approx(sum(len(r.turns) - 1 for r in records) / EXAMPLES)
    assert "agreement_correctness" in done.stdout and "conversations" in done.stderr
    assert "max_n_processes: 1" in (results / "config.yaml").read_text()


def test_same_seed_gives_identical_records(first_run, tmp_path):
    results, _ = first_run
    validate(tmp_path)
    assert comparable(tmp_path) == comparable(results)


def test_killed_run_resumes_without_loss_or_duplicates(first_run, tmp_path):
    results, _ = first_run
    process = subprocess.Popen(command(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "conversations.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if store.exists() and 1 <= store.read_text().count("\n") < EXAMPLES:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = len(read_records(tmp_path))
    assert 1 <= finished_before < EXAMPLES, "the kill should land halfway"
    validate(tmp_path)
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(lines) == EXAMPLES == len({(r["example_id"], r["sample_index"]) for r in lines})
    assert comparable(tmp_path) == comparable(results)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads((results / "metrics.json").read_text())


def test_metrics_cli_recomputes_the_same_file(first_run, tmp_path):
    results, _ = first_run
    expected = json.loads((results / "metrics.json").read_text())
    (tmp_path / "conversations.jsonl").write_text((results / "conversations.jsonl").read_text())
    done = subprocess.run([sys.executable, "-m", "coral.metrics", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "metrics.json").read_text()) == expected


def test_an_unavailable_model_is_recorded_as_errors_not_a_crash(tmp_path):
    done = subprocess.run(
        command(tmp_path)[:-4]
        + ["--model.teacher_model", "no-such-model", "--data.val_max_instances", "2",
           "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_records(tmp_path)
    assert len(records) == 2 and all(r.stop_reason == "error" for r in records)
    assert all("neither a local checkpoint" in r.turns[-1].error for r in records)
    assert json.loads((tmp_path / "metrics.json").read_text())["conv_err"] == 1.0
