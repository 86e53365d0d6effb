"""Every runnable config under configs/ runs end to end on the embedded model, on two examples (every protocol).

Runs in-process (one model load for all configs); turns are kept short so the whole set stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coral.store import read_records
from lightning_modules.trainer import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
SMALLER = {
    "debate": ["--model.protocol.init_args.agents", "2", "--model.protocol.init_args.rounds", "2"],
    "gvr": ["--model.protocol.init_args.passes", "1"],
}
"""The smallest debate and generate-verify-refine that still exercise every part (a Coral run gets 2 turns)."""


def test_config_runs_end_to_end(eval_config, data_override, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = [
        "validate", "--config", str(eval_config),
        "--data.val_max_instances", "2",
        "--model.max_turns", "2",
        "--model.max_turn_tokens", "16",
        "--model.extractor.max_tokens", "8",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
    ] + data_override(eval_config) + SMALLER.get(eval_config.parent.name, [])
    main(args)
    records = read_records(tmp_path)
    assert len(records) == 2
    for record in records:
        assert record.stop_reason in ("agreement", "max_turns", "completed"), record.metadata
        generated = record.turns[1:]
        assert generated and all(t.text and t.usage.completion_tokens > 0 for t in generated)
        assert all((t.correct is not None) == t.carries_answer for t in generated)  # critiques are never graded
        assert (record.outcome is not None) == (record.protocol != "coral")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_conversations"] == 2 and metrics["conv_err"] == 0.0
