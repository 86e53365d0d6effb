from __future__ import annotations

import pytest

from coral.tasks import get_task
from coral.tasks.instructions import STYLES, render


def test_every_style_names_topic_and_answer_format() -> None:
    assert STYLES == ("assistant_sbs_short", "assistant_sbs", "assistant_sbs_cot", "simple_cot")
    for style in STYLES:
        text = render(style, topic="chess", answer_format="End with 'Move: <move>'.")
        assert "chess" in text
        assert text.rstrip().endswith("End with 'Move: <move>'.")


def test_styles_differ() -> None:
    rendered = {render(style, topic="math", answer_format="Box it.") for style in STYLES}
    assert len(rendered) == len(STYLES)


def test_unknown_style_suggests_close_names() -> None:
    with pytest.raises(KeyError) as info:
        render("assistant_sbs_shrt", topic="math", answer_format="")
    message = str(info.value)
    assert "did you mean assistant_sbs_short" in message
    assert "simple_cot" in message  # all known styles are listed


def test_task_instruction_uses_its_answer_format() -> None:
    math_text = get_task("math").instruction("assistant_sbs_short")
    assert "math problems" in math_text
    assert r"$\boxed{\sqrt{3}}$" in math_text
    mmlu_text = get_task("mmlu_pro").instruction("simple_cot")
    assert "reasoning-focused question answering" in mmlu_text
    assert '"The correct answer is (B)"' in mmlu_text
