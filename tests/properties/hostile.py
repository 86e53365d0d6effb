"""Hypothesis strategies for hostile model output, and one task and example per task variant, for the properties.

Model output reaches the parsers unfiltered, so the strategies mix arbitrary unicode with the pieces parsers look
for ("\\boxed{", "The correct answer is", "####", "Short Answer:", braces, runs of spaces) and repeat them up to
about a megabyte, deeply nested or never closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from hypothesis import HealthCheck, example, settings
from hypothesis import strategies as st

from coral.tasks import TASKS, Example, Task, get_task

MEGABYTE = 1 << 20
T = TypeVar("T")

FAST = settings(
    deadline=timedelta(milliseconds=100),  # a slow example is re-run before it fails, so noise does not fail a test
    max_examples=20,  # modest: with the megabyte attacks as explicit examples, CI pays about 40 s for all
    derandomize=True,  # the same examples on every run: CI failures reproduce
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Settings of every property bounded at 100 ms a call."""

PIECES = (
    "\\boxed{", "\\fbox{", "$\\boxed{", "{", "}", "}$", "$", "$$", "(", ")", "(C)", "(c)", "(a bit)", "*", "**",
    "The correct answer is", "answer is", "Answer:", "answer is:", "####", "1,", "9", "-", ".", "/",
    "Short Answer:", "The final answer is ", "not sure yet", "NOT SURE YET", "the ", "know", " not ",
    " ", "\t", "\n", "\r\n", "İ", "\u200b", "\x00", "\ud800",
)
"""What parsers look for, and characters that change length or meaning under lower() and splitting."""

SIZES = (1, 10, 1_000, 20_000, MEGABYTE)
"""Lengths (in characters, roughly) that repeated patterns are grown to."""


class Hostile(str):
    """A text that shows itself shortly in a failure report (a falsifying example may be a megabyte long)."""

    def __repr__(self) -> str:
        if len(self) <= 200:
            return super().__repr__()
        return f"Hostile({str.__repr__(self[:100])} + ... ({len(self):,} characters) ... + {str.__repr__(self[-40:])})"


def _repeat(unit: str, size: int) -> str:
    return unit * (size // len(unit) + 1) if unit else ""


def texts() -> st.SearchStrategy[str]:
    """Arbitrary unicode; mixtures of parser pieces; those repeated, nested or unclosed, up to about 1 MB."""
    piece = st.one_of(st.sampled_from(PIECES), st.text(max_size=6))
    mixture = st.lists(piece, max_size=30).map("".join)
    unit = st.lists(piece, min_size=1, max_size=4).map("".join)
    repeated = st.builds(_repeat, unit, st.sampled_from(SIZES))
    nested = st.builds(
        lambda opening, inside, depth, closed: opening * depth + inside + ("}" * depth if closed else ""),
        st.sampled_from(["{", "\\boxed{", "\\fbox{", "$\\boxed{", "\\boxed{\\frac{"]),
        mixture,
        st.sampled_from(SIZES[:-1] + (MEGABYTE // 8,)),
        st.booleans(),
    )
    spaced = st.builds(
        lambda phrase, spaces, size, tail: phrase + _repeat(spaces, size) + tail,
        st.sampled_from(["The correct answer is", "answer is:", "####", "Answer: **", "answer is $", "Short Answer:"]),
        st.sampled_from([" ", "\t", " \n", " *", ": ", "$ "]),
        st.sampled_from(SIZES),
        mixture,
    )
    framed = st.builds(lambda head, body, tail: head + body + tail, mixture, st.one_of(repeated, nested), mixture)
    return st.one_of(st.text(), mixture, repeated, nested, spaced, framed).map(Hostile)


ATTACKS = (
    ("The correct answer is", " ", ""),
    ("The correct answer is:", " \t\n", "**"),
    ("", "answer is ", ""),
    ("The answer is", " ", "$"),
    ("####", " ", " **"),
    ("answer is $", " ", ""),
    ("", "\\boxed{", ""),
    ("", "\\boxed{{", ""),
    ("\\boxed{", "{", ""),
    ("", "$\\boxed{", "}"),
    ("", "{", ""),
    ("", "}", ""),
    ("", "Short Answer:", ""),
    ("", "1,", ""),
    ("", "(", ""),
    ("", "not sure yet ", ""),
)
"""(prefix, unit, suffix): the unit repeated between them is what broke a parser, or could."""


def with_attacks(*arguments: str) -> Callable[[T], T]:
    """Hypothesis ``@example``s, run before the random ones: each attack grown to a megabyte, as every argument."""

    def decorate(test: T) -> T:
        for prefix, unit, suffix in ATTACKS:
            attack = Hostile(prefix + _repeat(unit, MEGABYTE) + suffix)
            test = example(**dict.fromkeys(arguments, attack))(test)
        return test

    return decorate


@dataclass
class Variant:
    """A task built with some options, and an example of it to parse and grade against."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name + "".join(f"-{key}={value}" for key, value in self.options.items())

    @property
    def pooled(self) -> bool:
        """Whether grading may go to math-verify worker processes."""
        return self.name in ("math", "gsm8k")

    def task(self) -> Task:
        return get_task(self.name, **self.options)

    def example(self) -> Example:
        mode = self.options.get("mode", "answer_only")
        answer, choices = EXAMPLE_ANSWERS[self.name if mode == "answer_only" else f"{self.name}:{mode}"]
        return Example(id="x", task=self.name, question="What is it?", answer=answer, choices=choices)


EXAMPLE_ANSWERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "math": (r"\frac{1}{2}", ()),
    "gsm8k": ("18", ()),
    "mmlu_pro": ("J", tuple("abcdefghij")),
    "gpqa": ("B", ("w", "x", "y", "z")),
    "commonsense_qa": ("E", tuple("abcde")),
    "anli": ("C", ("entailment", "neutral", "contradiction")),
    "mbpp_cr": ("A", ("Yes, the code is correct", "No, the code is incorrect")),
    "explore_tom": ("does not know about it", ()),
    "hi_tom": ("green_crate", ()),
    "hi_tom:multiple_choice": ("B", ("blue_drawer", "green_crate", "red_box")),
}
"""Gold answer and choices of the example each task variant is parsed and graded against."""

EXTRA_OPTIONS: dict[str, list[dict[str, Any]]] = {"hi_tom": [{}, {"mode": "multiple_choice"}]}


def variants() -> list[Variant]:
    """Every registered task, default and compat, in each of its modes."""
    return [
        Variant(name, {**options, **({"compat": True} if compat else {})})
        for name in TASKS.names()
        for options in EXTRA_OPTIONS.get(name, [{}])
        for compat in (False, True)
    ]
