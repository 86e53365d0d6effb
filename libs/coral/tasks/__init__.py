"""Tasks: one module per dataset, each registered by name when ``coral.tasks`` is imported.

Every module of this package is imported here, so adding a task is adding one module (plus a config). Importing
is cheap: no worker pools start and math-verify (sympy) is imported only inside grading workers.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration
from coral.tasks.base import NOT_SURE, TASKS, Example, Task, read_jsonl, require, stable_id
from coral.tasks.instructions import STYLES
from coral.tasks.math import MathTask
from coral.tasks.mmlu_pro import MMLUProTask
from coral.tasks.multiple_choice import MultipleChoiceTask


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name``; an unknown name fails suggesting the closest ones."""
    return TASKS.get(name)(**kwargs)


__all__ = [
    "NOT_SURE",
    "STYLES",
    "TASKS",
    "Example",
    "MMLUProTask",
    "MathTask",
    "MultipleChoiceTask",
    "Task",
    "get_task",
    "read_jsonl",
    "require",
    "stable_id",
]
