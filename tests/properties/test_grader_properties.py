"""Every task's grader and agreement, on any beliefs: a bool, never an exception, never the event loop held.

Beliefs come from the parsers and so are bounded by their window, but graders are checked on anything. MATH and
GSM8K compare with math-verify in worker processes, where a pathological expression may run until the timeout:
for them the bound is on the work done in the event loop's thread, and answers longer than any real answer
never reach a worker at all, so those calls stay within 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from hostile import FAST, MEGABYTE, Variant, texts, variants, with_attacks
from hypothesis import given, settings
from hypothesis import strategies as st

from coral.tasks import Task
from coral.tasks.math_equivalence import MAX_ANSWER_CHARS

IN_PROCESS = [variant for variant in variants() if not variant.pooled]
POOLED = [variant for variant in variants() if variant.pooled and not variant.options.get("compat")]
"""MATH and GSM8K; their compat mode grades the same way and agrees by string equality, so it is left out."""


@pytest.mark.parametrize("variant", IN_PROCESS, ids=lambda variant: variant.id)
@FAST
@given(a=texts(), b=texts())
@with_attacks("a", "b")
def test_graders_answer_quickly_on_any_beliefs(variant: Variant, a: str, b: str) -> None:
    task, example = variant.task(), variant.example()
    assert isinstance(asyncio.run(task.grade(a, example)), bool)
    assert isinstance(asyncio.run(task.agree(a, b, example)), bool)


@pytest.fixture(scope="module", params=POOLED, ids=lambda variant: variant.id)
def pooled(request: pytest.FixtureRequest) -> Iterator[tuple[Task, Variant]]:
    """A MATH-family task whose worker pool is started before the timed examples (the start takes 1-2 s).

    MATH is the session's shared task (tests/conftest.py), so the suite starts its pool once.
    """
    variant = request.param
    task = request.getfixturevalue("math_task") if variant.name == "math" else variant.task()
    asyncio.run(task.grade("x", variant.example()))  # not a plain number: GSM8K sends it to the pool too
    yield task, variant
    if variant.name != "math":
        task.close()


@settings(FAST, deadline=None, max_examples=10)  # math-verify may take a while, in a worker
@given(a=st.text(max_size=200), b=st.text(max_size=200))
def test_math_graders_never_hold_the_event_loop(pooled: tuple[Task, Variant], a: str, b: str) -> None:
    task, variant = pooled
    example = variant.example()
    start = time.thread_time()  # CPU time of this thread, the loop's: waiting for a worker costs nothing
    assert isinstance(asyncio.run(task.grade(a, example)), bool)
    assert isinstance(asyncio.run(task.agree(a, b, example)), bool)
    assert time.thread_time() - start < 0.1


HUGE = st.builds(
    lambda unit, size: unit * (size // len(unit) + 1),
    st.text(min_size=1, max_size=8),
    st.sampled_from([MAX_ANSWER_CHARS + 1, MEGABYTE]),
)


@settings(FAST, max_examples=10)
@given(a=HUGE, b=st.one_of(HUGE, st.text()))
def test_answers_longer_than_any_real_one_are_graded_without_a_worker(
    pooled: tuple[Task, Variant], a: str, b: str
) -> None:
    task, variant = pooled
    assert asyncio.run(task.grade(a, variant.example())) is False
    assert asyncio.run(task.agree(a, b, variant.example())) is (a == b)
