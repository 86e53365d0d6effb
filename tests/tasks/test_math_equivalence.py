from __future__ import annotations

import asyncio
import time

import pytest

from coral.tasks.math_equivalence import MAX_ANSWER_CHARS, MathEquivalence

HANGS = r"9^{9^{9^{9}}}"  # sympy tries to evaluate this tower; it never finishes within the timeout


@pytest.mark.asyncio
async def test_identical_strings_need_no_pool() -> None:
    equivalence = MathEquivalence()
    assert await equivalence.equal(r"\frac{1}{2}", r" \frac{1} {2} ") is True
    assert equivalence._pool is None  # nothing was started


@pytest.mark.asyncio
async def test_answers_too_long_for_any_real_answer_never_reach_a_worker() -> None:
    equivalence = MathEquivalence()
    huge = "{" * (MAX_ANSWER_CHARS + 1)
    assert await equivalence.equal(huge, huge + " ") is False
    assert await equivalence.equal(huge, huge) is True
    assert await equivalence.equal("1", "1" * 10**6) is False
    assert equivalence._pool is None  # nothing was started


@pytest.mark.asyncio
async def test_stuck_call_times_out_without_blocking_the_loop_or_later_calls() -> None:
    equivalence = MathEquivalence(timeout_s=4.0, workers=2)  # generous: CI machines can be busy
    try:
        assert await equivalence.equal("0.5", r"\frac12") is True  # starts (and warms) the pool
        first_pool = equivalence._pool
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        stuck, fine = await asyncio.gather(equivalence.equal(HANGS, "3"), equivalence.equal(r"\dfrac{1}{2}", "1/2"))
        elapsed = time.monotonic() - started
        ticking.cancel()

        assert (stuck, fine) == (False, True)
        assert elapsed < 30
        assert ticks >= 20  # the loop kept running while the worker was stuck
        assert equivalence._pool is not first_pool  # the stuck pool was replaced
        assert await equivalence.equal("2", "3") is False
        assert await equivalence.equal(r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)") is True
    finally:
        equivalence.close()


@pytest.mark.asyncio
async def test_close_then_reuse() -> None:
    equivalence = MathEquivalence()
    assert await equivalence.equal("1/2", "0.5") is True
    equivalence.close()
    assert equivalence._pool is None
    assert await equivalence.equal("1/2", "0.5") is True
    equivalence.close()


def test_usable_from_successive_event_loops() -> None:
    equivalence = MathEquivalence()
    try:
        assert asyncio.run(equivalence.equal("0.25", r"\frac14")) is True
        assert asyncio.run(equivalence.equal("0.25", r"\frac13")) is False
    finally:
        equivalence.close()


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="workers"):
        MathEquivalence(workers=0)
    with pytest.raises(ValueError, match="timeouts"):
        MathEquivalence(timeout_s=0)
