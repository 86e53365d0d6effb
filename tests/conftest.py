"""One shared MATH task, so its grading pool starts once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coral.tasks import MathTask


@pytest.fixture(scope="session")
def math_task() -> Iterator[MathTask]:
    task = MathTask()
    yield task
    task.close()
