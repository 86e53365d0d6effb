"""ANLI (Nie et al., 2020): adversarial natural language inference, as three-way multiple choice.

Reads the v1.0 JSONL from ``anli_v1.0.zip`` (``anli_v1.0/R{1,2,3}/{train,dev,test}.jsonl``): ``uid``,
``context`` (the premise), ``hypothesis`` and ``label`` (``e``/``n``/``c``), plus annotation fields kept in
``Example.source``. The premise key ``premise`` and the Hugging Face export's integer labels (0 entailment,
1 neutral, 2 contradiction) are accepted too. The options are always (A) entailment (B) neutral
(C) contradiction, so a belief is a letter like every other multiple-choice task's.

One file is one round; the round is read from the path (``.../R2/test.jsonl``), else from the row's ``tag``
(``r2_test``), and stored as ``source["round"]``. The dataset's README asks for results per round, so a config
names one round's file rather than mixing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, opening_lead, read_jsonl, require, unique_ids
from coral.tasks.multiple_choice import MultipleChoiceTask, format_options

CHOICES = ("entailment", "neutral", "contradiction")
_LABELS: dict[object, str] = {"e": "A", "n": "B", "c": "C", 0: "A", 1: "B", 2: "C"}
"""Gold label -> option letter, in the order of CHOICES (v1.0 letters, HF integers)."""
_ROUND_DIR = re.compile(r"R([1-9])")
_ROUND_TAG = re.compile(r"r([1-9])_")

QUESTION = (
    "Given the premise, is the hypothesis definitely true (entailment), definitely false (contradiction), "
    "or neither (neutral)?"
)


@TASKS.register("anli")
class ANLITask(MultipleChoiceTask):
    """ANLI v1.0; the gold answer is the letter of the label, the id the dataset's ``uid``."""

    name = "anli"
    topic = "natural language inference"

    def load(self, path: str | Path) -> Iterator[Example]:
        path_round = round_from_path(path)
        rows = read_jsonl(path)
        return unique_ids(((path, line, self._from_row(path, line, row, path_round)) for line, row in rows), "uid")

    def _from_row(self, path: str | Path, line: int, row: dict[str, Any], path_round: int | None) -> Example:
        uid = require(row, "uid", str, path, line)
        premise_key = "context" if "context" in row or "premise" not in row else "premise"
        premise = require(row, premise_key, str, path, line).strip()
        hypothesis = require(row, "hypothesis", str, path, line).strip()
        for name, value in ((premise_key, premise), ("hypothesis", hypothesis)):
            if not value:
                raise DataError(path, line, name, "empty")
        label = require(row, "label", (str, int), path, line)
        if isinstance(label, bool) or label not in _LABELS:
            raise DataError(path, line, "label", f"expected 'e', 'n' or 'c' (or 0, 1, 2), got {label!r}")
        tag = row.get("tag")
        tag_match = _ROUND_TAG.match(tag) if isinstance(tag, str) else None
        round_ = path_round if path_round is not None else int(tag_match.group(1)) if tag_match else None
        question = f"Premise: {premise}\nHypothesis: {hypothesis}\n{QUESTION}"
        return Example(
            id=uid,
            task=self.name,
            question=question,
            answer=_LABELS[label],
            choices=CHOICES,
            source={**row, "round": round_},
        )

    def opening_message(self, example: Example, posed: bool = False) -> str:
        return (
            f"{opening_lead('solve', posed)} this natural language inference problem:\n{example.question}\n"
            f"And the choices are:\n{format_options(example.choices)}"
        )


def round_from_path(path: str | Path) -> int | None:
    """The round of an ``anli_v1.0/R<n>/<split>.jsonl`` path (its nearest ``R<n>`` folder), or None."""
    for part in reversed(Path(path).parts[:-1]):
        match = _ROUND_DIR.fullmatch(part)
        if match:
            return int(match.group(1))
    return None

