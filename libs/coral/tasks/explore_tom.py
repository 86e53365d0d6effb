"""ExploreToM (Sclar et al., 2024): adversarially generated theory-of-mind stories with short-answer questions.

Reads the published ``ExploreToM-data-sample.csv`` (Hugging Face ``facebook/ExploreToM``; columns
``story_structure``, ``infilled_story``, ``question``, ``expected_answer``, ``qprop=nth_order``,
``sprop=global_idx``, ..., possibly after an unnamed pandas index column) and Coral-style JSONL rows with at least
``story_structure``, ``question`` and ``expected_answer``. The reference showed the templated
``story_structure``, not the LLM-infilled prose; ``story_field`` chooses.

The example id hashes the templated story and the question, so it does not depend on which story field is shown;
when the row carries ``sprop=global_idx`` the id starts with it, to keep a story's questions together. The index
alone is not used as the key because its uniqueness across generation settings was not checked on the CSV.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, read_jsonl, require, stable_id
from coral.tasks.theory_of_mind import ShortAnswerTask

STORY_FIELDS = ("story_structure", "infilled_story")
ORDER_COLUMN = "qprop=nth_order"
"""-1: factual (memory or ground truth) question; 1 and 2: first- and second-order theory of mind."""
INDEX_COLUMN = "sprop=global_idx"


@TASKS.register("explore_tom")
class ExploreToMTask(ShortAnswerTask):
    """ExploreToM short-answer questions; the gold answer is ``expected_answer``.

    Args:
        compat: reproduce the reference's normalisation, matcher and string-equality agreement.
        story_field: ``story_structure`` (templated, as in the reference) or ``infilled_story`` (natural prose).
    """

    name = "explore_tom"

    def __init__(self, compat: bool = False, story_field: str = "story_structure") -> None:
        super().__init__(compat=compat)
        if story_field not in STORY_FIELDS:
            raise ValueError(f"story_field must be one of {', '.join(STORY_FIELDS)}, got {story_field!r}")
        self.story_field = story_field

    def load(self, path: str | Path) -> Iterator[Example]:
        """A ``.csv`` file (the published sample) or a ``.jsonl`` file (Coral's split)."""
        path = Path(path)
        if path.suffix == ".csv":
            rows = _read_csv(path)
        elif path.suffix == ".jsonl":
            rows = read_jsonl(path)
        else:
            raise DataError(path, None, None, "expected a .csv (ExploreToM-data-sample.csv) or a .jsonl file")
        seen: dict[str, int] = {}
        for line, row in rows:
            example = self._from_row(path, line, row)
            if example.id in seen:
                raise DataError(path, line, "question", f"same story and question as line {seen[example.id]}")
            seen[example.id] = line
            yield example

    def _from_row(self, path: Path, line: int, row: dict[str, Any]) -> Example:
        story = _non_empty(row, self.story_field, path, line)
        question = _non_empty(row, "question", path, line)
        answer = _non_empty(row, "expected_answer", path, line)
        order = _optional_int(row, ORDER_COLUMN, path, line)
        index = _optional_int(row, INDEX_COLUMN, path, line)
        content_id = stable_id(row.get("story_structure") or story, question)
        example_id = content_id if index is None else f"{index}-{content_id}"
        source = {**row, "story": story, "nth_order": order}
        return Example(id=example_id, task=self.name, question=question, answer=answer, source=source)

    def groups(self, example: Example) -> dict[str, str]:
        order = example.source.get("nth_order")
        return {} if order is None else {"nth_order": str(order)}


def _read_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (first physical line, row); stories span several lines, so the record's own line is reported."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        start = 1
        try:
            if reader.fieldnames is None:
                raise DataError(path, 1, None, "empty file (no header)")
            start = reader.line_num + 1
            for row in reader:
                if None in row:
                    raise DataError(path, start, None, "more values than header columns")
                yield start, row
                start = reader.line_num + 1
        except csv.Error as exc:  # e.g. a cell past the csv module's limit of 131,072 characters
            raise DataError(path, start, None, f"not valid CSV ({exc})") from None


def _non_empty(row: dict[str, Any], name: str, path: Path, line: int) -> str:
    value = require(row, name, str, path, line)
    if not value.strip():
        raise DataError(path, line, name, "empty")
    return value


def _optional_int(row: dict[str, Any], name: str, path: Path, line: int) -> int | None:
    """An integer column that may be absent or blank; CSV cells are strings, and pandas may write "2.0"."""
    value = row.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise DataError(path, line, name, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(path, line, name, f"expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise DataError(path, line, name, f"expected an integer, got {value!r}")
    return int(number)
