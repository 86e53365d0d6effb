"""Hi-ToM (He et al., 2023): higher-order theory of mind, "where does A think B thinks ... the X is?" up to order 4.

Reads the original ``Hi-ToM_data.json`` (``{"data": [record, ...]}``; ``ying-hui-he/Hi-ToM_dataset``). Each
record has ``prompting_type``, ``deception``, ``story_length``, ``question_order`` (0-4), ``sample_id``, ``story``,
``question``, ``choices`` (one string, ``"A. blue_drawer, B. green_crate, ..."``) and ``answer`` (the option's text).

Two modes:

- ``answer_only`` (default): the choices are not shown and the agents give a short answer, matched after
  normalisation; the Coral paper "ignores the multiple choices" and uses exact match.
- ``multiple_choice``: the choices are listed as (A)-(O) and the belief is a letter, graded by letter.

Quirks of the data, kept as they are: every ``VP`` record's story starts with the instruction "Read the
following story and answer the multiple-choice question. Please provide answer without explanations."; and the
``VP`` half of the file mostly repeats the ``CoTP`` questions, so ``prompting_type`` can select one half (600
questions each, the paper's Hi-ToM size).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import NOT_SURE, TASKS, Example, parse_json, require
from coral.tasks.judge_prompt import judge_messages
from coral.tasks.multiple_choice import ANSWER_FORMAT as LETTER_ANSWER_FORMAT
from coral.tasks.multiple_choice import LETTERS, format_options, letters, parse_judge_letter, parse_stated_letter
from coral.tasks.theory_of_mind import ShortAnswerTask

MODES = ("answer_only", "multiple_choice")
PROMPTING_TYPES = ("CoTP", "VP")
MAX_ORDER = 4

_OPTION_START = re.compile(r",\s*(?=[A-Z]\.\s)")
_OPTION = re.compile(r"([A-Z])\.\s+(.+)", re.DOTALL)


def parse_choices(text: str) -> tuple[str, ...]:
    """``"A. x, B. y, ..."`` as ``("x", "y", ...)``; the letters must run A, B, C, ... in order."""
    parts = _OPTION_START.split(text.strip())
    if len(parts) > len(LETTERS):
        raise ValueError(f"more than {len(LETTERS)} options in {text!r}")
    options = []
    for expected, part in zip(LETTERS, parts):
        match = _OPTION.fullmatch(part.strip())
        if match is None or match.group(1) != expected:
            raise ValueError(f"option {expected} is missing or malformed: {part!r}")
        options.append(match.group(2).strip())
    return tuple(options)


@TASKS.register("hi_tom")
class HiToMTask(ShortAnswerTask):
    """Hi-ToM; the id is the record's ``sample_id``, the question order is ``Example.source["order"]``.

    Args:
        compat: reproduce the reference's normalisation (underscores for spaces), matcher and string-equality
            agreement (answer-only mode).
        mode: ``answer_only`` or ``multiple_choice``.
        prompting_type: keep only ``CoTP`` or ``VP`` records (None: all).
    """

    name = "hi_tom"
    reference_underscores = True

    def __init__(self, compat: bool = False, mode: str = "answer_only", prompting_type: str | None = None) -> None:
        super().__init__(compat=compat)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if prompting_type is not None and prompting_type not in PROMPTING_TYPES:
            known = ", ".join(PROMPTING_TYPES)
            raise ValueError(f"prompting_type must be one of {known} or None, got {prompting_type!r}")
        self.mode = mode
        self.prompting_type = prompting_type

    @property
    def multiple_choice(self) -> bool:
        return self.mode == "multiple_choice"

    # -- loader ------------------------------------------------------------------------------------------

    def load(self, path: str | Path) -> Iterator[Example]:
        document = parse_json(Path(path).read_text(encoding="utf-8"), path)
        records = document.get("data") if isinstance(document, dict) else None
        if not isinstance(records, list):
            raise DataError(path, None, "data", 'expected an object {"data": [record, ...]}')
        seen: set[str] = set()
        for number, record in enumerate(records):
            where = f"{path}, record {number}"
            if not isinstance(record, dict):
                raise DataError(where, None, None, "expected a JSON object")
            example = self._from_record(where, record)
            if example.id in seen:
                raise DataError(where, None, "sample_id", f"duplicate id {example.id!r}")
            seen.add(example.id)
            if self.prompting_type in (None, record["prompting_type"]):
                yield example

    def _from_record(self, where: str, record: dict[str, Any]) -> Example:
        require(record, "prompting_type", str, where, None)
        order = _require_int(record, "question_order", where)
        if not 0 <= order <= MAX_ORDER:
            raise DataError(where, None, "question_order", f"expected 0 to {MAX_ORDER}, got {order}")
        sample_id = _require_int(record, "sample_id", where)
        for name in ("story", "question", "answer"):
            if not require(record, name, str, where, None).strip():
                raise DataError(where, None, name, "empty")
        try:
            choices = parse_choices(require(record, "choices", str, where, None))
            letters(len(choices))
        except ValueError as exc:
            raise DataError(where, None, "choices", str(exc)) from None
        answer = record["answer"]
        if choices.count(answer) != 1:
            raise DataError(where, None, "answer", f"{answer!r} is not exactly one of the choices")
        if self.multiple_choice:
            answer = LETTERS[choices.index(answer)]
        return Example(
            id=str(sample_id),
            task=self.name,
            question=record["question"],
            answer=answer,
            choices=choices if self.multiple_choice else (),
            source={**record, "order": order},
        )

    def groups(self, example: Example) -> dict[str, str]:
        return {"order": str(example.source["order"])}

    # -- prompts -----------------------------------------------------------------------------------------

    def opening_message(self, example: Example, posed: bool = False) -> str:
        message = super().opening_message(example, posed)
        if self.multiple_choice:
            message += f"\nAnd the choices are:\n{format_options(example.choices)}"
        return message

    def answer_instruction(self) -> str:
        return LETTER_ANSWER_FORMAT if self.multiple_choice else self.answer_format

    def extraction_prompt(self, example: Example, text: str) -> list[dict[str, str]]:
        if not self.multiple_choice:
            return super().extraction_prompt(example, text)
        story_and_question = f"Story: {self.story(example)}\nQuestion: {example.question}"
        options = format_options(example.choices)
        return judge_messages(
            [("The original story and question:", story_and_question), ("The options:", options)],
            text,
            f'Extract the answer in ([A-Z]) format, or say "{NOT_SURE}".',
        )

    # -- beliefs and grading -----------------------------------------------------------------------------

    def parse_belief(self, text: str, example: Example) -> str | None:
        if self.multiple_choice:
            return parse_stated_letter(text, len(example.choices))
        return super().parse_belief(text, example)

    def parse_judge_output(self, text: str, example: Example) -> str | None:
        if self.multiple_choice:
            return parse_judge_letter(text, len(example.choices), self.compat)
        return super().parse_judge_output(text, example)

    async def grade(self, belief: str, example: Example) -> bool:
        if self.multiple_choice:
            return belief == example.answer
        return await super().grade(belief, example)

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        if self.multiple_choice:
            return belief_a == belief_b
        return await super().equivalent(belief_a, belief_b, example)


def _require_int(record: dict[str, Any], name: str, where: str) -> int:
    value = require(record, name, int, where, None)
    if isinstance(value, bool):
        raise DataError(where, None, name, "expected int, got bool")
    return value
