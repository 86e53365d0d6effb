"""``trainer.py validate`` against a scripted model server: what a person sees, a rerun with nothing to do, redoing
errored conversations, SIGTERM (Slurm's pre-emption, sent to a real process) and a disk that fills up.

The server runs in this process (a ScriptedBackend behind coral's OpenAI-compatible API), so the tests control
latency and failures; runs are in-process too, except the one that receives SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coral.backends import ScriptedBackend
from coral.backends.base import InvalidRequestError
from coral.backends.models import DEFAULT_MODEL
from coral.serving.local import LocalServer
from coral.serving.openai_api import build_openai_app
from coral.store import StoreWriteError, read_records
from lightning_modules.trainer import cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
COT = "configs/cot/cot_mmlu_pro.yaml"
CONVERSATION = "configs/ts_mmlu_pro.yaml"
FAILING_QUESTION = "A water bed sells"  # the first MMLU-Pro question (id 168)


class Model(ScriptedBackend):
    """Always answers (A); a question containing ``fail_on`` gets a 400, which clients do not retry."""

    def __init__(self) -> None:
        super().__init__(self.answer)
        self.fail_on: str | None = None

    def answer(self, messages, sampling):
        if self.fail_on and any(self.fail_on in message["content"] for message in messages):
            return InvalidRequestError("scripted refusal")
        return "The correct answer is (A)"


@pytest.fixture(scope="module")
def model_server() -> Iterator[tuple[Model, str]]:
    model = Model()
    with LocalServer(build_openai_app(model, [DEFAULT_MODEL])) as server:
        yield model, server.base_url


@pytest.fixture
def model(model_server) -> Model:
    backend, _ = model_server
    backend.fail_on, backend.latency_s = None, 0.0
    return backend


def arguments(url: str, root: Path, config: str = COT, *extra: str) -> list[str]:
    return [
        "validate", "--config", config, f"--model.teacher_app_name={url}", f"--model.student_app_name={url}",
        "--model.extractor.mode=rules", f"--trainer.default_root_dir={root}", "--trainer.logger=false", *extra,
    ]


def validate(url: str, root: Path, *extra: str, config: str = COT) -> None:
    """A run in this process (the trainer's start is paid once); a failure raises as it would end the command."""
    assert cli(arguments(url, root, config, *extra)) == 0


def lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "conversations.jsonl").read_text().splitlines()]


def table_rows(stdout: str) -> list[str]:
    return [line.split()[0] for line in stdout.split("coral results in", 1)[1].splitlines()[3:] if line.strip()]


def test_summary_once_no_tips_nothing_to_do_and_retrying_errors(model_server, model, tmp_path, capfd):
    _, url = model_server
    model.fail_on = FAILING_QUESTION
    validate(url, tmp_path, "--data.val_max_instances=4")
    stdout, stderr = capfd.readouterr()
    out = stdout + stderr
    assert out.count("coral results in") == 1 and "Validate metric" not in out  # one table, coral's
    assert "Tip:" not in out and "litlogger" not in out
    rows = table_rows(stdout)
    assert "final_answer_accuracy" in rows and "conv_err" in rows
    assert not {"agreement", "agreement_correctness", "persuade_rate", "assert_rate"} & set(rows)  # one turn: CoT
    assert [r.example_id for r in read_records(tmp_path) if r.stop_reason == "error"] == ["168"]
    stored = (tmp_path / "conversations.jsonl").read_text()

    validate(url, tmp_path, "--data.val_max_instances=4")
    said = f"nothing to run: all 4 conversations are already stored in {tmp_path} (1 ended in an error; "
    assert said in capfd.readouterr().out
    assert (tmp_path / "conversations.jsonl").read_text() == stored  # errors are not redone by default

    model.fail_on = None
    validate(url, tmp_path, "--data.val_max_instances=4", "--model.retry_errors=true")
    records = read_records(tmp_path)
    assert sorted(r.example_id for r in records) == sorted(line["example_id"] for line in lines(tmp_path)[:4])
    assert all(r.stop_reason != "error" for r in records)
    assert [r.metadata.get("error_retry") for r in records if r.example_id == "168"] == [1]
    assert len(lines(tmp_path)) == 5  # the errored line stays in the file, superseded
    assert json.loads((tmp_path / "metrics.json").read_text())["conv_err"] == 0.0


def test_sigterm_stops_the_run_stores_what_finished_and_a_rerun_completes(model_server, model, tmp_path):
    _, url = model_server
    model.latency_s = 0.3  # each conversation: two turns of 0.3 s, two at a time
    run = ["--data.val_max_instances=12", "--model.max_turns=4", "--model.max_n_processes=2"]
    trainer = [sys.executable, "lightning_modules/trainer.py", *arguments(url, tmp_path, CONVERSATION, *run)]
    process = subprocess.Popen(trainer, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = tmp_path / "conversations.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not (store.exists() and store.read_text()):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stored = read_records(tmp_path)
    assert 1 <= len(stored) < 12, "the signal should land mid-run"
    assert len(lines(tmp_path)) == len(stored)
    assert f"stopped by SIGTERM: {12 - len(stored)} conversations were not run" in stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["n_conversations"] == len(stored)
    assert "coral results in" in stdout

    model.latency_s = 0.0
    validate(url, tmp_path, *run, config=CONVERSATION)
    keys = [(line["example_id"], line["sample_index"]) for line in lines(tmp_path)]
    assert len(keys) == len(set(keys)) == 12


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 64 KiB tmpfs (root only): room for the run's config and a few records, not for all of them."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_stops_the_run_cleanly_and_a_rerun_completes(model_server, model, small_disk, capsys):
    _, url = model_server
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"x" * 24 * 1024)
    root = small_disk / "run"
    run = ["--data.val_max_instances=16", "--model.max_n_processes=1"]  # one record per append
    with pytest.raises(StoreWriteError, match="could not store") as stopped:
        validate(url, root, *run)
    assert str(stopped.value).startswith(f"{root / 'conversations.jsonl'}: could not store 1 finished conversation")
    assert "No space left on device" in str(stopped.value)
    text = (root / "conversations.jsonl").read_text()
    assert text.endswith("\n") and 1 <= len(lines(root)) < 16  # only complete records, every line parses
    assert not (root / "metrics.json").exists()

    ballast.unlink()  # space is back (for the records and metrics; the report's figures do not fit in 64 KiB)
    validate(url, root, *run)
    assert "report not written" in capsys.readouterr().err
    keys = [(line["example_id"], line["sample_index"]) for line in lines(root)]
    assert len(keys) == len(set(keys)) == 16
    assert json.loads((root / "metrics.json").read_text())["n_conversations"] == 16
