r"""MATH (Hendrycks et al., 2021): competition problems whose final answer is written in ``\boxed{...}``.

Two distribution formats are read, and give the same ids and gold answers for the same problem:

- PRM800K ``math_splits`` JSONL (``problem``, ``answer``, ``unique_id`` such as ``test/precalculus/807.json``),
  the format Coral's loader expects;
- the original per-problem JSON files ``MATH/<split>/<subject>/<n>.json`` (``problem``, ``level``, ``type``,
  ``solution``), a directory of them or one file. The gold answer is the last box in ``solution``, and the id is
  the path's last three parts, which is exactly PRM800K's ``unique_id``.

Grading and agreement both use math-verify's equivalence (``0.5`` agrees with ``\frac12``). The reference graded
with the PRM800K grader (Hendrycks normalisation, then sympy) and agreed by string equality; ``compat=True``
keeps the string-equality agreement and the reference's reading of the judge's reply (``reference_judge_answer``),
since the grader here is math-verify either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from coral.errors import DataError
from coral.tasks.base import (
    NOT_SURE,
    TASKS,
    Example,
    Task,
    opening_lead,
    parse_json,
    read_jsonl,
    require,
    stable_id,
    unique_ids,
)
from coral.tasks.boxed import iter_boxed, last_boxed
from coral.tasks.judge_prompt import judge_messages
from coral.tasks.math_equivalence import MathEquivalence
from coral.tasks.parsing import reply_head, turn_tail, unsure_at


@TASKS.register("math")
class MathTask(Task):
    r"""MATH with a boxed final answer.

    Args:
        compat: agree by string equality of beliefs and read the judge's reply as the reference did (grading
            stays math-verify).
        timeout_s: longest one equivalence check may run before it counts as "not equivalent".
        workers: math-verify worker processes.
    """

    name = "math"
    topic = "math"
    answer_format = r"Write your final answer in a LaTeX box, for example $\boxed{\sqrt{3}}$."

    def __init__(self, compat: bool = False, timeout_s: float = 5.0, workers: int = 2) -> None:
        super().__init__(compat=compat)
        self._equivalence = MathEquivalence(timeout_s=timeout_s, workers=workers)

    # -- loader ------------------------------------------------------------------------------------------

    def load(self, path: str | Path) -> Iterator[Example]:
        """A ``.jsonl`` file (PRM800K), a directory of per-problem ``.json`` files, or one such file."""
        path = Path(path)
        located: Iterator[tuple[Path, int | None, Example]]  # (file, line, example), for error messages
        if path.is_dir():
            files = sorted(path.rglob("*.json"))
            if not files:
                raise DataError(path, None, None, "no .json problem files found in this directory")
            located = ((file, None, self._from_problem_file(file)) for file in files)
        elif path.suffix == ".json":
            located = iter([(path, None, self._from_problem_file(path))])
        else:
            located = ((path, line, self._from_jsonl_row(path, line, row)) for line, row in read_jsonl(path))
        yield from unique_ids(located, "unique_id")

    def _from_jsonl_row(self, path: Path, line: int, row: dict[str, Any]) -> Example:
        problem = _non_empty(row, "problem", path, line)
        answer = _non_empty(row, "answer", path, line)
        unique_id = row.get("unique_id")
        if unique_id is not None and not isinstance(unique_id, str):
            raise DataError(path, line, "unique_id", f"expected str, got {type(unique_id).__name__}")
        example_id = unique_id or stable_id(problem, answer)
        return Example(id=example_id, task=self.name, question=problem, answer=answer.strip(), source=row)

    def _from_problem_file(self, path: Path) -> Example:
        row = parse_json(path.read_text(encoding="utf-8"), path)
        if not isinstance(row, dict):
            raise DataError(path, None, None, "expected a JSON object")
        problem = _non_empty(row, "problem", path, None)
        solution = require(row, "solution", str, path, None)
        answer = last_boxed(solution)
        if answer is None:
            raise DataError(path, None, "solution", "no non-empty \\boxed{...} final answer")
        example_id = "/".join(path.absolute().parts[-3:])  # <split>/<subject>/<n>.json = PRM800K unique_id
        return Example(id=example_id, task=self.name, question=problem, answer=answer, source=row)

    # -- prompts -----------------------------------------------------------------------------------------

    def opening_message(self, example: Example, posed: bool = False) -> str:
        return f'{opening_lead("solve", posed)} this math problem: "{example.question}"'

    def extraction_prompt(self, example: Example, text: str) -> list[dict[str, str]]:
        return judge_messages(
            [("The original question:", example.question)],
            text,
            f'Extract the answer in $\\boxed{{}}$ format, or say "{NOT_SURE}".',
        )

    # -- beliefs -----------------------------------------------------------------------------------------

    def parse_belief(self, text: str, example: Example) -> str | None:
        """The last boxed answer of the turn: agents restate their final answer last."""
        return last_boxed(turn_tail(text))

    def parse_judge_output(self, text: str, example: Example) -> str | None:
        """The judge's first boxed answer, unless it said "not sure yet" before giving one.

        Small judges often write "The answer is $x$" instead of boxing it; that form is accepted too (the
        reference's regex only took boxes, so such replies counted as "no answer"). Compat mode reads the reply
        as the reference did (``reference_judge_answer``).
        """
        text = reply_head(text)
        if self.compat:
            return reference_judge_answer(text)
        unsure = unsure_at(text)
        for start, content in iter_boxed(text):
            if 0 <= unsure < start:
                return None
            if content.strip():
                return content.strip()
        stated = _STATED_ANSWER.search(text)
        if stated is None or 0 <= unsure < stated.start():
            return None
        return stated.group(1).strip() or None

    # -- grading -----------------------------------------------------------------------------------------

    async def grade(self, belief: str, example: Example) -> bool:
        return await self._equivalence.equal(example.answer, belief)

    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        return await self._equivalence.equal(belief_a, belief_b)

    def close(self) -> None:
        self._equivalence.close()


_STATED_ANSWER = re.compile(r"answer is:?\s*+\$++([^$]++)\$", re.IGNORECASE)
"""``answer is $x$`` (or ``$$x$$``): the unboxed way a judge may name a LaTeX answer (possessive: linear time)."""

_REFERENCE_BOX = "$\\boxed{"


def reference_judge_answer(text: str) -> str | None:
    r"""A MATH judge reply as the reference read it (reference 3.3), in linear time.

    "not sure yet" anywhere: unsure (None). Otherwise the first match of its regex ``\$\\boxed\{.*\}\$``: a
    ``$\boxed{`` and, greedily, the last ``}$`` on the same line. Its matcher then graded the last box inside that
    span, which is the belief here (the span itself if it holds no closed box, so ``$\boxed{}$`` is the empty,
    valid belief it was there). Anything else was "Error: <reply>", no belief: a ``\boxed{x}`` without the dollar
    signs, or "The answer is $x$".
    """
    if unsure_at(text) >= 0:
        return None
    start = text.find(_REFERENCE_BOX)
    while start >= 0:
        line_end = text.find("\n", start)
        line_end = len(text) if line_end < 0 else line_end
        close = text.rfind("}$", start + len(_REFERENCE_BOX), line_end)
        if close >= 0:
            span = text[start + len(_REFERENCE_BOX) : close]
            return last_boxed("\\boxed{" + span + "}") or span.strip()
        start = text.find(_REFERENCE_BOX, line_end)  # no "}$" after this box on its line, nor after a later one
    return None


def _non_empty(row: dict[str, Any], name: str, path: Path, line: int | None) -> str:
    value = require(row, name, str, path, line)
    if not value.strip():
        raise DataError(path, line, name, "empty")
    return value
