"""MMLU-Pro (Wang et al., 2024): reasoning-focused questions with up to ten lettered options.

Reads the JSONL that Coral's loader expects (``question``, ``options``, ``answer``), which is also what the
TIGER-Lab evaluation outputs and ``data/mmlu_pro/test.jsonl`` hold; the official parquet has the same columns.
Option counts vary from 1 to 10 (a quarter of the questions have fewer than 10), so a letter past the last
option is never a valid belief.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, read_jsonl, require, stable_id, unique_ids
from coral.tasks.multiple_choice import MultipleChoiceTask, require_letter, require_options

MAX_OPTIONS = 10


@TASKS.register("mmlu_pro")
class MMLUProTask(MultipleChoiceTask):
    """MMLU-Pro; the gold answer is the option letter, the id the dataset's ``question_id``."""

    name = "mmlu_pro"
    topic = "reasoning-focused question answering"

    def load(self, path: str | Path) -> Iterator[Example]:
        rows = read_jsonl(path)
        return unique_ids(((path, line, self._from_row(path, line, row)) for line, row in rows), "question_id")

    def _from_row(self, path: str | Path, line: int, row: dict[str, Any]) -> Example:
        question = require(row, "question", str, path, line)
        if not question.strip():
            raise DataError(path, line, "question", "empty")
        options = require_options(row, "options", path, line, most=MAX_OPTIONS)
        answer = require_letter(row, "answer", path, line, count=len(options))
        index = row.get("answer_index")
        if index is not None and index != ord(answer) - ord("A"):
            raise DataError(path, line, "answer_index", f"{index!r} does not match answer {answer!r}")
        question_id = row.get("question_id")
        if question_id is not None and (isinstance(question_id, bool) or not isinstance(question_id, (int, str))):
            raise DataError(path, line, "question_id", f"expected int or str, got {type(question_id).__name__}")
        example_id = str(question_id) if question_id is not None else stable_id(question, options)
        return Example(id=example_id, task=self.name, question=question, answer=answer, choices=options, source=row)
