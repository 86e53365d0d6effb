"""What every task provides: a loader for the original file format, prompts, a belief parser and a grader.

A task module reads top to bottom: loader, opening message, instruction arguments, extraction prompt, belief
parser, grader, agreement. Grading and agreement share one equivalence, so the stop rule and the accuracy
metrics can never disagree about whether two answers are the same.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from coral.errors import DataError
from coral.registry import Registry
from coral.tasks import instructions

TASKS: Registry[Task] = Registry("task")

NOT_SURE = "not sure yet"
"""What the judge answers when a turn commits to no answer (the reference's wording)."""


@dataclass(frozen=True)
class Example:
    """One problem. ``id`` is stable across runs: derived from the source row, never from load order alone."""

    id: str
    task: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def stable_id(*parts: object) -> str:
    """A short content hash, for sources whose rows carry no id of their own."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn what reading ``path`` can raise besides a DataError into one that names the file (and line).

    A missing or unreadable file names the file; text that is not UTF-8 names the first line that does not decode
    (found by rescanning the file's bytes, so loaders of any format need no bookkeeping of their own).
    """
    try:
        yield
    except OSError as exc:
        problem = exc.strerror or str(exc).removeprefix(f"{path}: ")  # a loader's own message may name the file
        raise DataError(exc.filename or path, None, None, problem) from None
    except UnicodeDecodeError as exc:
        raise DataError(path, _undecodable_line(Path(path)), None, f"not valid UTF-8 ({exc.reason})") from None


def _undecodable_line(path: Path) -> int | None:
    """The first line of ``path`` that is not UTF-8 (None for a folder: which of its files is unknown)."""
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def opening_lead(verb: str, posed: bool) -> str:
    """How turn 0 begins: "I'm trying to <verb>" (asking for help) or "I would like you to try and <verb>"."""
    return f"I would like you to try and {verb}" if posed else f"I'm trying to {verb}"


def parse_json(text: str, path: object, line: int | None = None) -> Any:
    """``text`` as JSON; else a DataError naming the file and the line (``line``, or the error's line in ``text``).

    Besides invalid JSON, the decoder fails on nesting deeper than Python's recursion limit and on a number of more
    than 4,300 digits (the limit of ``int``); both are data errors too.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, exc.lineno if line is None else line, None, f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(path, line, None, "not valid JSON (nested too deeply)") from None
    except ValueError:
        raise DataError(path, line, None, "not valid JSON (a number has more than 4,300 digits)") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object fails fast."""
    with reading(path), open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = parse_json(line, path, number)
            if not isinstance(row, dict):
                raise DataError(path, number, None, "expected a JSON object")
            yield number, row


def require(row: Mapping[str, Any], name: str, kind: type | tuple[type, ...], path: object, line: int | None) -> Any:
    """Return ``row[name]`` if present and of the expected type, else fail naming file, line and field."""
    if name not in row:
        raise DataError(path, line, name, "missing")
    value = row[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(path, line, name, f"expected {expected}, got {type(value).__name__}")
    return value


def unique_ids(located: Iterable[tuple[object, int | None, Example]], field: str) -> Iterator[Example]:
    """Yield (file, line, example) examples in order, failing on a repeated id: ids key the results store."""
    seen: set[str] = set()
    for where, line, example in located:
        if example.id in seen:
            raise DataError(where, line, field, f"duplicate id {example.id!r}")
        seen.add(example.id)
        yield example


class Task(ABC):
    """A collaborative-reasoning task.

    Args:
        compat: reproduce the reference implementation's observable matching (string-equality agreement and
            the task's documented quirks) instead of the corrected behaviour.
    """

    name: ClassVar[str]
    """Registry name, used in configs and records."""
    topic: ClassVar[str]
    """The instruction's ``task_name``: what kind of problems the agents work on."""
    answer_format: ClassVar[str]
    """The instruction's ``task_specific_inst``: how the final answer must be written."""

    def __init__(self, compat: bool = False) -> None:
        self.compat = compat

    @abstractmethod
    def load(self, path: str | Path) -> Iterator[Example]:
        """Read the dataset's original distribution format."""

    def read(self, path: str | Path) -> list[Example]:
        """Every example of ``path``, through ``load``; what a run or a split is made from.

        The whole file is read even when only the first N examples are used, so a malformed line anywhere stops
        the run before any work; a missing file or text that is not UTF-8 fails as a DataError naming the file.
        """
        with reading(path):
            return list(self.load(path))

    @abstractmethod
    def opening_message(self, example: Example, posed: bool = False) -> str:
        """Turn 0: the asker asks its partner for help with the problem, or (``posed``) sets it.

        Setting the problem for the partner to solve is the reference's teacher-first variant; ``opening_lead``
        words both.
        """

    def instruction(self, style: str) -> str:
        """The agents' system prompt in the given instruction style."""
        return instructions.render(style, topic=self.topic, answer_format=self.answer_instruction())

    def answer_instruction(self) -> str:
        """How an answer must be written for the parser to find it; protocols that word their own prompts use it."""
        return self.answer_format

    @abstractmethod
    def extraction_prompt(self, example: Example, text: str) -> list[dict[str, str]]:
        """Chat messages asking a judge model which answer ``text`` commits to."""

    @abstractmethod
    def parse_belief(self, text: str, example: Example) -> str | None:
        """The answer an agent's turn commits to by the task's own answer format, or None (rules only)."""

    @abstractmethod
    def parse_judge_output(self, text: str, example: Example) -> str | None:
        """The answer named by the judge's reply, or None for "not sure yet" or an unusable reply."""

    @abstractmethod
    async def grade(self, belief: str, example: Example) -> bool:
        """Whether a belief matches the gold answer."""

    async def agree(self, belief_a: str, belief_b: str, example: Example) -> bool:
        """Whether two beliefs are the same answer. Compat mode: the reference's plain string equality."""
        if self.compat:
            return belief_a == belief_b
        return await self.equivalent(belief_a, belief_b, example)

    @abstractmethod
    async def equivalent(self, belief_a: str, belief_b: str, example: Example) -> bool:
        """The equivalence grading uses, applied between two beliefs."""

    def groups(self, example: Example) -> dict[str, str]:
        """Sub-populations the run's metrics are also reported for (e.g. Hi-ToM's question order)."""
        return {}

    def close(self) -> None:  # noqa: B027 - a no-op unless the task holds worker pools
        """Release worker pools; the task stays usable (pools restart on demand)."""
