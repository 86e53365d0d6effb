"""What every multiple-choice task shares: lettered options, the "(B)" answer format, letter parsing and grading.

MMLU-Pro, GPQA, CommonsenseQA and ANLI subclass ``MultipleChoiceTask`` and write only a loader (ANLI also words
its opening message); Hi-ToM's multiple-choice variant reuses ``ANSWER_FORMAT``. A belief is one uppercase
letter, always checked against the example's number of choices: the reference kept every uppercase character of
the extracted text, so "Error: extraction network error" read as "E" and was graded correct whenever the gold
answer was E (reference 8.1.2).

In compat mode the judge's reply is read as the reference read it (reference 3.3): "not sure yet" anywhere in
the reply means unsure, even after a letter ("(C) but not sure yet"), and its first "(X)" is the belief even when
X is past the last option (the reference's matcher then graded it wrong).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from coral.errors import DataError
from coral.tasks.base import NOT_SURE, Example, Task, opening_lead, require
from coral.tasks.judge_prompt import judge_messages
from coral.tasks.parsing import reply_head, turn_tail, unsure_at

LETTERS = string.ascii_uppercase

ANSWER_FORMAT = (
    'Give your final answer in the form "The correct answer is (B)", with the letter of your choice in place of B.'
)

# "The correct answer is (B)", "the answer is: (b)", "Answer: **(B)**", "\boxed{B}", "\boxed{(B)}". The phrase is
# matched case-insensitively. The letter may be lowercase only in the required form, alone in parentheses, so prose
# such as "answer is (a bit)" or "answer is a" never matches; a box needs an uppercase letter (\boxed{c} is more
# often a variable). Every quantifier is possessive: the separators (spaces, colon, stars) are disjoint, so no
# match is lost, and a run of spaces is never re-split ("answer is" + 2,000 spaces took 18 s to backtrack through).
_STATED_LETTER = re.compile(
    r"(?i:answer\s*+(?:is\s*+:?|:))\s*+\**+\s*+\(([A-Za-z])\)"
    r"|\\boxed\{\s*+\(?([A-Z])\)?\s*+\}"
)
_JUDGE_LETTER = re.compile(r"\(([A-Z])\)")


def letters(count: int) -> tuple[str, ...]:
    """The option letters A, B, ... for ``count`` options."""
    if not 1 <= count <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 1 to {len(LETTERS)} options, got {count}")
    return tuple(LETTERS[:count])


def format_options(options: Sequence[str]) -> str:
    """One "(A) option" line per option."""
    return "\n".join(f"({letter}) {option}" for letter, option in zip(letters(len(options)), options))


def valid_letter(letter: str, count: int) -> bool:
    """Whether ``letter`` names one of ``count`` options."""
    return len(letter) == 1 and letter in LETTERS[:count]


def parse_stated_letter(text: str, count: int) -> str | None:
    """The letter of the last stated answer in an agent's turn if it names one of ``count`` options, else None."""
    matches = list(_STATED_LETTER.finditer(turn_tail(text)))
    if not matches:
        return None
    letter = (matches[-1].group(1) or matches[-1].group(2)).upper()
    return letter if valid_letter(letter, count) else None


def parse_judge_letter(text: str, count: int, compat: bool = False) -> str | None:
    """The judge's first "(X)" if valid for ``count`` options, unless it said "not sure yet" before it.

    ``compat``: the reference's reading (module docstring): unsure if "not sure yet" is anywhere, any letter A-Z.
    """
    text = reply_head(text)
    match = _JUDGE_LETTER.search(text)
    if match is None:
        return None
    unsure = unsure_at(text)
    if compat:
        return None if unsure >= 0 else match.group(1)
    if 0 <= unsure < match.start():
        return None
    return match.group(1) if valid_letter(match.group(1), count) else None


def require_options(row: dict[str, Any], name: str, path: object, line: int | None, most: int) -> tuple[str, ...]:
    """``row[name]`` as 1 to ``most`` option strings, else a DataError naming file, line and field."""
    options = require(row, name, list, path, line)
    if not 1 <= len(options) <= most:
        raise DataError(path, line, name, f"expected 1 to {most} options, got {len(options)}")
    for index, option in enumerate(options):
        if not isinstance(option, str):
            raise DataError(path, line, name, f"option {index} is {type(option).__name__}, expected str")
    return tuple(options)


def require_letter(row: dict[str, Any], name: str, path: object, line: int | None, count: int) -> str:
    """``row[name]`` as a letter naming one of ``count`` options, else a DataError naming file, line and field."""
    letter = require(row, name, str, path, line)
    if not valid_letter(letter, count):
        raise DataError(path, line, name, f"expected a letter A-{LETTERS[count - 1]} ({count} options), got {letter!r}")
    return letter


class MultipleChoiceTask(Task):
    """A task whose examples carry ``choices`` and whose gold answer is a letter; subclasses write ``load``."""

    answer_format = ANSWER_FORMAT

    def opening_message(self, example: Example, posed: bool = False) -> str:
        return (
            f'{opening_lead("solve", posed)} this problem: "{example.question}"\n'
            f"And the choices are:\n{format_options(example.choices)}"
        )

    def extraction_prompt(self, example: Example, text: str) -> list[dict[str, str]]:
        return judge_messages(
            [("The original question:", example.question), ("The options:", format_options(example.choices))],
            text,
            f'Extract the answer in ([A-Z]) format, or say "{NOT_SURE}".',
        )

    def parse_belief(self, text: str, example: Example) -> str | None:
        return parse_stated_letter(text, len(example.choices))

    def parse_judge_output(self, text: str, example: Example) -> str | None:
        return parse_judge_letter(text, len(example.choices), self.compat)

    async def grade(self, belief: str, example: Example) -> bool:
        return belief == example.answer

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        return belief_a == belief_b
