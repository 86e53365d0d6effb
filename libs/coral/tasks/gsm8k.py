r"""GSM8K (Cobbe et al., 2021): grade-school math word problems with a numeric final answer.

Reads the original ``openai/grade-school-math`` JSONL (``question``, ``answer``): the gold is what follows the
solution's last ``#### `` marker, with thousands separators removed (``#### 1,000`` -> ``1000``). Rows carry no
id, so the id is a hash of the question, which survives reordering and subsetting of the file.

Agents box their final answer, as for MATH. Grading compares plain numbers exactly, as fractions, without the
worker pool (``72`` = ``72.0`` = ``$72`` = ``1,000``-style separators removed; ``$``, ``%`` and a unit in
``\text{}`` are ignored, since every GSM8K gold is a bare number). Anything else (``\frac{1}{2}``) goes to
math-verify in worker processes, MATH's equivalence, so a script that grades must keep its top-level code under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import TASKS, Example, read_jsonl, require, stable_id, unique_ids
from coral.tasks.boxed import iter_boxed, last_boxed
from coral.tasks.math import MathTask
from coral.tasks.parsing import reply_head, turn_tail, unsure_at


@TASKS.register("gsm8k")
class GSM8KTask(MathTask):
    r"""GSM8K with a boxed numeric final answer: MATH's prompts and pool, GSM8K's loader, parser and grader.

    Args (as MathTask's):
        compat: agree by string equality of beliefs, as the reference did for MATH (grading is unchanged).
        timeout_s: longest one math-verify check may run before it counts as "not equivalent".
        workers: math-verify worker processes (started only when a comparison is not plain numbers).
    """

    name = "gsm8k"
    topic = "math word"
    answer_format = r"Write your final answer as a number in a LaTeX box, for example $\boxed{42}$."

    def load(self, path: str | Path) -> Iterator[Example]:
        rows = read_jsonl(path)
        return unique_ids(((path, line, self._from_row(path, line, row)) for line, row in rows), "question")

    def _from_row(self, path: str | Path, line: int, row: dict[str, Any]) -> Example:
        question = require(row, "question", str, path, line)
        if not question.strip():
            raise DataError(path, line, "question", "empty")
        solution = require(row, "answer", str, path, line)
        if "####" not in solution:
            raise DataError(path, line, "answer", "no '#### <number>' final answer")
        gold = solution.rsplit("####", 1)[1].strip()
        if plain_number(gold) is None:
            raise DataError(path, line, "answer", f"final answer after '####' is not a number: {gold!r}")
        gold = gold.replace(",", "")
        return Example(id=stable_id(question), task=self.name, question=question, answer=gold, source=row)

    def parse_belief(self, text: str, example: Example) -> str | None:
        """The last box; without one, the last "#### N" or "the answer is N" (GSM8K's own solution styles)."""
        text = turn_tail(text)
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
        matches = list(_STATED_NUMBER.finditer(text))
        return matches[-1].group(1).replace(",", "") if matches else None

    def parse_judge_output(self, text: str, example: Example) -> str | None:
        """The judge's first box, else its first stated number, unless it said "not sure yet" before it."""
        text = reply_head(text)
        unsure = unsure_at(text)
        for start, content in iter_boxed(text):
            if content.strip():
                return None if 0 <= unsure < start else content.strip()
        stated = _STATED_NUMBER.search(text)
        if stated is None or 0 <= unsure < stated.start():
            return None
        return stated.group(1).replace(",", "")

    async def grade(self, belief: str, example: Example) -> bool:
        return await self.equivalent(example.answer, belief, example)

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        """Plain numbers compare exactly without the pool; anything else goes to math-verify (gold first)."""
        a, b = plain_number(belief_a), plain_number(belief_b)
        if a is not None and b is not None:
            return a == b
        return await self._equivalence.equal(belief_a, belief_b)


_NUMBER = r"""(?>-?\d[\d,]*(?:\.\d+)?)(?=\s*+(?:$|[.,;:!?)*%$\\"'\]])|\s++[A-Za-z])"""
"""A number with optional thousands separators, then punctuation or a word ("3 + 4 = 7" and "2x" state none)."""
_STATED_NUMBER = re.compile(rf"(?:####|(?i:answer\s++is:?))\s*+\**+\s*+\$*+\s*+({_NUMBER})")
"""Possessive quantifiers (the separators are disjoint), so a run of spaces is never re-split: linear time."""
_TEXT = re.compile(r"\\(?:text|mbox|textrm)\{[^{}0-9]*\}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PLAIN = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+|\d+/\d+)")


def plain_number(answer: str) -> Fraction | None:
    r"""``answer`` as an exact number if it is a plain one (``1,000``, ``$72.00``, ``3/4``, ``18\text{ dollars}``)."""
    text = _TEXT.sub("", answer)
    for noise in ("\\$", "$", "\\%", "%", "\\!", "\\,"):
        text = text.replace(noise, "")
    text = text.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if not _PLAIN.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ZeroDivisionError, ValueError):  # ValueError: past Python's limit of 4,300 digits for int()
        return None
