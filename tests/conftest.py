"""Shared test helpers: one MATH task per session, and fixture data for configs whose data is not bundled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coral.tasks import MathTask

ROOT = Path(__file__).resolve().parents[1]

UNBUNDLED_DATA = {
    "gpqa": "tests/fixtures/gpqa/gpqa_synthetic.csv",
    "explore_tom": "tests/fixtures/explore_tom/synthetic_sample.csv",
    "mbpp_cr": "tests/fixtures/mbpp/mbpp_cr_sample.jsonl",
}
"""Task -> a test fixture, for configs whose data file cannot be shipped (licence or generated data)."""


def data_override(config: Path) -> list[str]:
    """Command-line arguments pointing a config at fixture data when its own data file is not bundled."""
    text = config.read_text()
    for task, fixture in UNBUNDLED_DATA.items():
        if f"task: {task}\n" in text:
            return ["--data.val_set_init_args.file_path", str(ROOT / fixture)]
    return []


@pytest.fixture(scope="session")
def math_task() -> Iterator[MathTask]:
    task = MathTask()
    yield task
    task.close()
