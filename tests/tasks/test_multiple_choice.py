from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from coral.tasks import Example, MMLUProTask
from coral.tasks.multiple_choice import format_options, letters, parse_judge_letter, parse_stated_letter
from coral.tasks.parsing import PARSE_WINDOW

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
        ("The correct answer is (c).", "C"),  # the required form with a lowercase letter
        ("the answer is: **(j)**", "J"),
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
        "The answer is A bit unclear",
        "The answer is (a bit) unclear",  # a lowercase letter counts only alone in parentheses
        "The answer is a",
        "The correct answer is c.",
        r"$\boxed{c}$",  # a lowercase letter in a box is more often a variable
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


def test_a_run_of_spaces_after_the_answer_phrase_is_read_in_linear_time() -> None:
    """The old pattern backtracked through every split of the spaces: 1,500 of them took seconds (20,000: hours)."""
    for spaces in (" " * 1_500, " \t\n" * 500):
        assert elapsed(parse_stated_letter, "The correct answer is" + spaces, 10) < 0.1
        assert parse_stated_letter("The correct answer is" + spaces + "(C)", 10) == "C"
        assert elapsed(parse_stated_letter, "The correct answer is:" + spaces + "**" + spaces, 10) < 0.1


def test_only_the_end_of_a_long_turn_is_read() -> None:
    padding = "x" * PARSE_WINDOW
    assert parse_stated_letter(f"The correct answer is (B). {padding}", 10) is None  # left to the judge
    assert parse_stated_letter(f"{padding} The correct answer is (B).", 10) == "B"
    assert parse_judge_letter(f"(B) {padding}", 10) == "B"
    assert parse_judge_letter(f"{padding} (B)", 10) is None


@pytest.mark.parametrize(
    ("reply", "default", "compat"),
    [
        ("(C) but not sure yet", "C", None),  # the reference: "not sure yet" anywhere means unsure
        ("(C)", "C", "C"),
        ("Not sure yet. (C)", None, None),
        ("The answer is (E).", None, "E"),  # past the fourth option: no belief, but a (wrong) belief in the reference
        ("no letter here", None, None),
    ],
)
def test_compat_reads_the_judge_as_the_reference_did(reply: str, default: str | None, compat: str | None) -> None:
    assert MMLUProTask().parse_judge_output(reply, FOUR) == default
    assert MMLUProTask(compat=True).parse_judge_output(reply, FOUR) == compat


def elapsed(function: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start
