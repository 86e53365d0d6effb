from __future__ import annotations

import pytest

from coral.tasks import Example, MMLUProTask
from coral.tasks.multiple_choice import format_options, letters, parse_judge_letter, parse_stated_letter

TEN = Example(id="10", task="mmlu_pro", question="q", answer="E", choices=tuple("abcdefghij"))
FOUR = Example(id="4", task="mmlu_pro", question="q", answer="B", choices=("w", "x", "y", "z"))


def test_letters_and_options() -> None:
    assert letters(4) == ("A", "B", "C", "D")
    assert format_options(["yes", "no"]) == "(A) yes\n(B) no"
    with pytest.raises(ValueError):
        letters(27)


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("Therefore, the correct answer is (C).", "C"),
        ("THE CORRECT ANSWER IS (J)", "J"),
        ("So the answer is (B).", "B"),
        ("Answer: (D)", "D"),
        ("The final answer is: **(A)**", "A"),
        (r"$\boxed{G}$", "G"),
        (r"$\boxed{(H)}$", "H"),
        ("First I thought the answer is (A), but the correct answer is (F).", "F"),
        ("The correct answer is (B). On reflection, the correct answer is (D)", "D"),
    ],
)
def test_parse_stated_letter(text: str, letter: str) -> None:
    assert parse_stated_letter(text, 10) == letter


@pytest.mark.parametrize(
    "text",
    [
        "Error: extraction network error",  # the reference read this as "E"
        "Error: judge timed out",
        "not sure yet",
        "I am leaning towards option E but need to check.",
        "The correct answer is (e).",  # the letter must be uppercase
        "The answer is A bit unclear",
        "",
    ],
)
def test_texts_without_a_stated_answer_never_parse(text: str) -> None:
    assert parse_stated_letter(text, 10) is None
    assert MMLUProTask().parse_belief(text, TEN) is None


def test_letter_beyond_last_choice_is_invalid() -> None:
    assert parse_stated_letter("The correct answer is (K).", 10) is None
    assert parse_stated_letter("The correct answer is (J).", 10) == "J"
    task = MMLUProTask()
    assert task.parse_belief("The correct answer is (E).", FOUR) is None
    assert task.parse_belief("The correct answer is (D).", FOUR) == "D"
    # the last stated answer decides; an invalid last answer is not replaced by an earlier one
    assert task.parse_belief("The answer is (A). No wait, the correct answer is (E).", FOUR) is None


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (C).", "C"),
        ("(B)", "B"),
        ("Not sure yet.", None),
        ("not sure yet, perhaps (A)", None),
        ("(A), though the responder was not sure yet earlier", "A"),
        ("The answer is (E).", None),  # only four options
        ("The response does not choose.", None),
        ("Error: extraction network error", None),
    ],
)
def test_parse_judge_output(text: str, letter: str | None) -> None:
    assert MMLUProTask().parse_judge_output(text, FOUR) == letter
    assert parse_judge_letter(text, 4) == letter
