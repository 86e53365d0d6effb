"""CommonsenseQA (Talmor et al., 2019): five-option questions that need everyday knowledge about a concept.

Two distribution formats are read, one object per line, and give equal examples (id, question, choices, gold)
for the same question:

- the original tau-nlp files (``train_rand_split.jsonl``, ``dev_rand_split.jsonl``): ``answerKey``, ``id`` and a
  nested ``question`` object with ``stem``, ``question_concept`` and ``choices`` as ``[{label, text}, ...]``;
- the Hugging Face ``tau/commonsense_qa`` export: ``question`` is the stem and ``choices`` is
  ``{label: [...], text: [...]}``.

Every question has exactly the options A-E in that order; anything else is rejected rather than re-lettered,
since a gold letter only means something against the labels it was written for. The unlabeled test split has no
``answerKey`` (or an empty one in the HF export) and so cannot be graded; it fails with a DataError.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, read_jsonl, require, unique_ids
from coral.tasks.multiple_choice import MultipleChoiceTask, letters, require_letter

LABELS = letters(5)


@TASKS.register("commonsense_qa")
class CommonsenseQATask(MultipleChoiceTask):
    """CommonsenseQA; the gold answer is ``answerKey`` (A-E), the id the dataset's ``id``."""

    name = "commonsense_qa"
    topic = "commonsense question answering"

    def load(self, path: str | Path) -> Iterator[Example]:
        rows = read_jsonl(path)
        return unique_ids(((path, line, self._from_row(path, line, row)) for line, row in rows), "id")

    def _from_row(self, path: str | Path, line: int, row: dict[str, Any]) -> Example:
        example_id = require(row, "id", str, path, line)
        question = require(row, "question", (dict, str), path, line)
        if isinstance(question, dict):  # original tau-nlp schema
            schema, nested = "tau-nlp", _prefixed(question, "question.")
            stem_field, choices_field = "question.stem", "question.choices"
            stem = require(nested, stem_field, str, path, line)
            concept = require(nested, "question.question_concept", str, path, line)
            labels, texts = _split_choices(require(nested, choices_field, list, path, line), path, line)
        else:  # Hugging Face schema
            schema, stem, stem_field, choices_field = "huggingface", question, "question", "choices"
            concept = require(row, "question_concept", str, path, line)
            choices = _prefixed(require(row, "choices", dict, path, line), "choices.")
            labels = require(choices, "choices.label", list, path, line)
            texts = require(choices, "choices.text", list, path, line)
        if not stem.strip():
            raise DataError(path, line, stem_field, "empty")
        if tuple(labels) != LABELS or len(texts) != len(LABELS):
            raise DataError(path, line, choices_field, f"expected labels A-E in order, got {labels!r}")
        for label, text in zip(LABELS, texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(path, line, choices_field, f"choice {label} is not a non-empty string")
        answer = require_letter(row, "answerKey", path, line, count=len(LABELS))
        source = {"schema": schema, "question_concept": concept}
        return Example(
            id=example_id, task=self.name, question=stem.strip(), answer=answer, choices=tuple(texts), source=source
        )


def _prefixed(mapping: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``mapping`` with dotted keys, so ``require`` names a nested field in full ("question.stem")."""
    return {f"{prefix}{key}": value for key, value in mapping.items()}


def _split_choices(choices: list[Any], path: str | Path, line: int) -> tuple[list[Any], list[Any]]:
    """The tau-nlp ``[{label, text}, ...]`` list as parallel label and text lists, like the HF schema's."""
    labels, texts = [], []
    for choice in choices:
        if not isinstance(choice, dict):
            raise DataError(path, line, "question.choices", f"expected objects, got {type(choice).__name__}")
        labels.append(choice.get("label"))
        texts.append(choice.get("text"))
    return labels, texts
