"""A recorded run of the real embedded model, rerun now: the records must not change (issue 15's refactors, and
issue 14's protocols and schema v3: an old Coral config gives the same turns, texts, seeds, beliefs, grades and
metrics).

The recording and how it was made: tests/fixtures/recorded_runs/ts_math_small/README.md. Every field is compared
except wall time (``latency_s``), the schema version and fields the recording does not have (fields added since,
which must hold their Coral values).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "fixtures" / "recorded_runs" / "ts_math_small"
TIMINGS = frozenset({"latency_s"})
SCHEMA = "schema_version"
"""The recording is schema v2; a rerun writes the current version, whose new fields the comparison skips."""


def differences(recorded: Any, now: Any, where: str = "") -> list[str]:
    """Where ``now`` differs from ``recorded``, skipping timings and keys ``recorded`` lacks."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return [
            diff
            for key, value in recorded.items()
            if key not in TIMINGS | {SCHEMA}
            for diff in (differences(value, now[key], f"{where}.{key}") if key in now else [f"{where}.{key}: gone"])
        ]
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        return [diff for i, (a, b) in enumerate(zip(recorded, now)) for diff in differences(a, b, f"{where}[{i}]")]
    return [] if recorded == now else [f"{where}: recorded {recorded!r}, now {now!r}"]


def records(folder: Path) -> dict[str, Any]:
    lines = (folder / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    return {f"{r['example_id']}#{r['sample_index']}": r for r in map(json.loads, lines)}


def test_differences_skip_timings_and_new_fields_but_nothing_else():
    recorded = {"turns": [{"latency_s": 1.0, "belief": "2", "tokens": 5}], "stop_reason": "agreement"}
    now = {"turns": [{"latency_s": 9.0, "belief": "2", "tokens": 5, "new_field": 1}], "stop_reason": "agreement"}
    assert differences(recorded, now) == []
    now["turns"][0]["tokens"] = 6
    del now["stop_reason"]
    assert differences(recorded, now) == [".turns[0].tokens: recorded 5, now 6", ".stop_reason: gone"]
    assert differences([1], [1, 2]) == [": recorded [1], now [1, 2]"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerunning_the_recorded_config_gives_the_same_records(tmp_path):
    command = [
        sys.executable, "lightning_modules/trainer.py", "validate", "--config", str(RECORDED / "config.yaml"),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=850)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded, now = records(RECORDED), records(tmp_path)
    assert sorted(now) == sorted(recorded)
    for key, record in recorded.items():
        assert differences(record, now[key], key) == []
        assert (now[key]["schema_version"], now[key]["outcome"]) == (3, None)
        new_turn_fields = {(t["role"], t["round"], t["parent"], t["carries_answer"]) for t in now[key]["turns"]}
        assert new_turn_fields == {(None, None, None, True)}
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert differences(json.loads((RECORDED / "metrics.json").read_text(encoding="utf-8")), metrics, "metrics") == []
