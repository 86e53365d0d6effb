"""The debate and generate-verify-refine configs end to end on the embedded model: records and metrics written, a
SIGKILL mid-run resumed without losing or duplicating a conversation, and the same records (every field but wall
time) as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_recorded_run import differences, records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--data.val_max_instances", "2", "--model.max_turn_tokens", "40", "--model.max_n_processes", "1"]
"""Two problems of 40-token turns, one conversation at a time so a kill can land between two of them."""


def validate(config: str, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "lightning_modules/trainer.py", "validate", "--config", config, *SMALL, *extra,
               "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out / "logs")]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def kill_after_first_record(process: subprocess.Popen, out: Path) -> None:
    store = out / "conversations.jsonl"
    while process.poll() is None and not (store.is_file() and store.read_text(encoding="utf-8").count("\n") >= 1):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize(("config", "protocol", "extra"), [
    ("configs/debate/debate_gsm8k.yaml", "debate",
     ["--model.protocol.init_args.agents", "2", "--model.protocol.init_args.rounds", "2"]),
    ("configs/gvr/gvr_gsm8k.yaml", "generate_verify_refine", ["--model.protocol.init_args.passes", "2"]),
])
def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_one(tmp_path, config, protocol, extra):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    finish(validate(config, whole, *extra))
    interrupted = validate(config, killed, *extra)
    kill_after_first_record(interrupted, killed)
    assert (killed / "conversations.jsonl").read_text(encoding="utf-8").count("\n") == 1
    finish(validate(config, killed, *extra))

    lines = (killed / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and len({(r["example_id"], r["sample_index"]) for r in map(json.loads, lines)}) == 2
    before, after = records(whole), records(killed)
    assert sorted(after) == sorted(before)
    for key, record in before.items():
        assert record["protocol"] == protocol and record["outcome"] is not None
        assert differences(record, after[key], key) == []
    metrics = json.loads((killed / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n_conversations"] == 2 and 0.0 <= metrics["mv_accuracy"] <= 1.0
    assert metrics == json.loads((whole / "metrics.json").read_text(encoding="utf-8"))
