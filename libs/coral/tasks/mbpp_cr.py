"""MBPP-CR (Coral, reference 2.2): is this model-written solution to an MBPP problem correct?

A binary question asked as two lettered options, so the multiple-choice answer format, parser and grader apply
unchanged: (A) the code is correct, (B) it is not. Rows are what ``coral.synthesis.mbpp_cr_builder`` writes (one
sampled solution each, labelled by running MBPP's asserts in ``coral.sandbox``); the gold letter comes from that
label, ``is_correct``. The agents see the problem, the code and the asserts, but never the execution result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, opening_lead, read_jsonl, require, unique_ids
from coral.tasks.multiple_choice import MultipleChoiceTask, format_options

CHOICES = ("Yes, the code is correct", "No, the code is incorrect")
CORRECT, INCORRECT = "A", "B"


@TASKS.register("mbpp_cr")
class MBPPCRTask(MultipleChoiceTask):
    """MBPP-CR; the id is the builder's ``<task_id>-<sample index>``, the gold letter A (correct) or B."""

    name = "mbpp_cr"
    topic = "code reasoning"

    def load(self, path: str | Path) -> Iterator[Example]:
        rows = read_jsonl(path)
        return unique_ids(((path, line, self._from_row(path, line, row)) for line, row in rows), "id")

    def _from_row(self, path: str | Path, line: int, row: dict[str, Any]) -> Example:
        example_id = require(row, "id", str, path, line)
        text = require(row, "text", str, path, line)
        if not text.strip():
            raise DataError(path, line, "text", "empty")
        code = require(row, "code", str, path, line)
        tests = require(row, "test_list", list, path, line)
        if not tests or not all(isinstance(test, str) for test in tests):
            raise DataError(path, line, "test_list", "expected a non-empty list of str")
        is_correct = require(row, "is_correct", bool, path, line)
        question = present(text, code, tests)
        answer = CORRECT if is_correct else INCORRECT
        return Example(id=example_id, task=self.name, question=question, answer=answer, choices=CHOICES, source=row)

    def opening_message(self, example: Example, posed: bool = False) -> str:
        return (
            f"{opening_lead('determine', posed)} whether this code correctly solves the problem: {example.question}\n"
            f"And the choices are:\n{format_options(example.choices)}"
        )


def present(text: str, code: str, tests: list[str]) -> str:
    """The problem, the code, the asserts it must pass and the question, as the agents and the judge see them."""
    code = code.replace("\r\n", "\n").strip("\n")
    return (
        f'"{text.strip()}"\n\nThe code:\n```python\n{code}\n```\n\n'
        f"The tests it must pass:\n```python\n" + "\n".join(t.strip() for t in tests) + "\n```\n\n"
        "Is this code correct?"
    )
