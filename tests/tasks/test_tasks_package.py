from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coral.tasks import TASKS, MathTask, MMLUProTask, get_task

LIBS = Path(__file__).resolve().parents[2] / "libs"


def test_registry_names_and_get_task() -> None:
    assert {"math", "mmlu_pro"} <= set(TASKS.names())
    assert isinstance(get_task("math"), MathTask)
    task = get_task("mmlu_pro", compat=True)
    assert isinstance(task, MMLUProTask) and task.compat


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="did you mean mmlu_pro"):
        get_task("mmlu-pro")


def test_import_is_cheap() -> None:
    """Importing coral.tasks starts no pool and never imports sympy or math-verify in the importing process."""
    code = (
        "import sys, coral.tasks; t = coral.tasks.get_task('math'); "
        "print(any(m.split('.')[0] in ('sympy', 'math_verify', 'latex2sympy2_extended') for m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(LIBS)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
