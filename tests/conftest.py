"""Shared test helpers: one MATH task per session, the evaluation configs, and fixture data for unbundled configs.

Test modules never import this file (``from conftest import ...`` picks up whichever ``conftest`` module pytest
imported last, e.g. ``tests/metrics/conftest.py``): what they share is a fixture, and a test that takes
``eval_config`` runs once per evaluation config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coral.tasks import MathTask

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

EVAL_CONFIGS = sorted(
    p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in ("common", "finetuning", "serving")
)
"""Every evaluation config under configs/, recursively: common/ holds defaults, finetuning/ and serving/ hold the
training loop's and the cluster's own files."""

UNBUNDLED_DATA = {
    "gpqa": "tests/fixtures/gpqa/gpqa_synthetic.csv",
    "explore_tom": "tests/fixtures/explore_tom/synthetic_sample.csv",
    "mbpp_cr": "tests/fixtures/mbpp/mbpp_cr_sample.jsonl",
}
"""Task -> a test fixture, for configs whose data file cannot be shipped (licence or generated data)."""


def config_id(config: Path) -> str:
    """A config's test id: its path under configs/ (``cot/cot_math.yaml``)."""
    return config.relative_to(CONFIGS).as_posix()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes ``eval_config`` once per evaluation config."""
    if "eval_config" in metafunc.fixturenames:
        metafunc.parametrize("eval_config", EVAL_CONFIGS, ids=config_id)


def point_at_fixture_data(config: Path) -> list[str]:
    """Command-line arguments pointing a config at fixture data when its own data file is not bundled."""
    text = config.read_text()
    for task, fixture in UNBUNDLED_DATA.items():
        if f"task: {task}\n" in text:
            return ["--data.val_set_init_args.file_path", str(ROOT / fixture)]
    return []


@pytest.fixture
def eval_configs() -> list[Path]:
    """The evaluation configs (see ``EVAL_CONFIGS``)."""
    return EVAL_CONFIGS


@pytest.fixture
def data_override() -> Callable[[Path], list[str]]:
    """``data_override(config)``: the arguments that point ``config`` at fixture data when its data is not bundled."""
    return point_at_fixture_data


@pytest.fixture(scope="session")
def math_task() -> Iterator[MathTask]:
    task = MathTask()
    yield task
    task.close()
