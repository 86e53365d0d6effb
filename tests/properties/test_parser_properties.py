"""Every task's parsers, on any text: a belief or None, never an exception, never more than 100 ms a call.

Parsers run on the event loop on untrusted model output (issue 16: a regex took 18 s on "The correct answer is"
and 2,000 spaces, the box scanner 33 s on 32 KB of unclosed boxes).
"""

from __future__ import annotations

import pytest
from hostile import FAST, Variant, texts, variants, with_attacks
from hypothesis import given, settings

from coral.tasks import TASKS

VARIANTS = variants()


def test_every_registered_task_is_covered() -> None:
    assert {variant.name for variant in VARIANTS} == set(TASKS.names())


@pytest.mark.parametrize("method", ["parse_belief", "parse_judge_output"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.id)
@settings(FAST, max_examples=30)
@given(text=texts())
@with_attacks("text")
def test_parsers_answer_quickly_on_any_text(variant: Variant, method: str, text: str) -> None:
    belief = getattr(variant.task(), method)(text, variant.example())
    assert belief is None or isinstance(belief, str)
