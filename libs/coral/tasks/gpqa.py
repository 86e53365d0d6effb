"""GPQA (Rein et al., 2023): graduate-level ("Google-proof") biology, physics and chemistry questions.

Reads the original CSV from the authors' password-protected ``dataset.zip`` (``gpqa_main.csv``,
``gpqa_diamond.csv``, ``gpqa_extended.csv``). The file lists the right answer in ``Correct Answer`` and three
wrong ones in ``Incorrect Answer 1..3``, so the loader shuffles the four options itself, per question, with
``random.Random(f"{shuffle_seed}:{id}")``: the order then depends on neither load order nor the process, and
the permutation is stored in ``Example.source``. The reference read a converted JSONL with pre-shuffled choices
and recorded no seed (reference 2.2), so its option orders cannot be reproduced.

The authors ask that GPQA not be published in plain text: no data is bundled, and the tests use a synthetic CSV.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from pathlib import Path

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, stable_id
from coral.tasks.multiple_choice import LETTERS, MultipleChoiceTask

QUESTION = "Question"
CORRECT = "Correct Answer"
INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
RECORD_ID = "Record ID"
REQUIRED = (QUESTION, CORRECT, *INCORRECT)


@TASKS.register("gpqa")
class GPQATask(MultipleChoiceTask):
    """GPQA with four shuffled options (A)-(D); the id is the CSV's ``Record ID``.

    Args:
        compat: reproduce the reference's string-equality agreement (the same as the default for letters).
        shuffle_seed: seed of the per-question option shuffle; change it to test sensitivity to option order.
    """

    name = "gpqa"
    topic = "PhD-level biology, physics, and chemistry"

    def __init__(self, compat: bool = False, shuffle_seed: int = 0) -> None:
        super().__init__(compat=compat)
        self.shuffle_seed = shuffle_seed

    def load(self, path: str | Path) -> Iterator[Example]:
        """One example per CSV record; quoted cells may span lines, and errors name a record's first line."""
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no such file. GPQA is not bundled; extract gpqa_main.csv (or gpqa_diamond.csv, ...) from "
                "dataset.zip of github.com/idavidrein/gpqa (the password is in its README)"
            )
        seen: set[str] = set()
        # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark a spreadsheet export may add.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise DataError(path, None, None, "empty file (no header row)")
            for column in REQUIRED:
                if column not in header:
                    raise DataError(path, 1, column, "missing column in the header row")
            end = reader.line_num
            try:
                for cells in reader:
                    line, end = end + 1, reader.line_num
                    if not cells:
                        continue
                    if len(cells) != len(header):
                        raise DataError(path, line, None, f"expected {len(header)} cells, got {len(cells)}")
                    example = self._from_row(path, line, dict(zip(header, cells)))
                    if example.id in seen:
                        raise DataError(path, line, RECORD_ID, f"duplicate id {example.id!r}")
                    seen.add(example.id)
                    yield example
            except csv.Error as exc:
                raise DataError(path, end + 1, None, f"not valid CSV ({exc})") from None

    def _from_row(self, path: str | Path, line: int, row: dict[str, str]) -> Example:
        # Cells often carry stray spaces or newlines; an option must fit on its "(A) ..." line.
        cells = {column: row[column].strip() for column in REQUIRED}
        for column, value in cells.items():
            if not value:
                raise DataError(path, line, column, "empty")
        question = cells[QUESTION]
        example_id = row.get(RECORD_ID, "").strip() or stable_id(question)
        options = [cells[CORRECT], *(cells[column] for column in INCORRECT)]
        permutation = self.permutation(example_id)
        choices = tuple(options[index] for index in permutation)
        answer = LETTERS[permutation.index(0)]
        source = {**row, "permutation": permutation, "shuffle_seed": self.shuffle_seed}
        return Example(id=example_id, task=self.name, question=question, answer=answer, choices=choices, source=source)

    def permutation(self, example_id: str) -> list[int]:
        """Option order: entry i is the index in [correct, incorrect 1, 2, 3] of the option shown as letter i."""
        order = list(range(1 + len(INCORRECT)))
        random.Random(f"{self.shuffle_seed}:{example_id}").shuffle(order)
        return order
