from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.base import stable_id
from coral.tasks.gsm8k import GSM8KTask, plain_number

ROOT = Path(__file__).resolve().parents[2]
JSONL = ROOT / "data" / "gsm8k" / "test.jsonl"
MALFORMED = ROOT / "tests" / "fixtures" / "gsm8k" / "malformed"


@pytest.fixture(scope="module")
def gsm8k_task() -> Iterator[GSM8KTask]:
    """One task per module, so its math-verify pool starts once."""
    task = GSM8KTask()
    yield task
    task.close()


def example(answer: str = "18") -> Example:
    return Example(id="x", task="gsm8k", question="How many eggs?", answer=answer)


def test_loads_the_bundled_sample() -> None:
    examples = list(GSM8KTask().load(JSONL))
    assert len(examples) == 100 and len({e.id for e in examples}) == 100
    first = examples[0]
    assert (first.id, first.answer) == ("ab872de0634403f9", "70000")
    assert first.id == stable_id(first.question)  # a content hash: it survives reordering the file
    assert first.source["answer"].endswith("#### 70000")
    assert examples[60].answer == "14000"  # line 61 reads "#### 14,000"
    assert (examples[-1].id, examples[-1].answer) == ("817bbc4b4011f48b", "594")


def test_opening_message_and_instruction() -> None:
    task = GSM8KTask()
    first = next(iter(task.load(JSONL)))
    assert task.opening_message(first) == (
        "I'm trying to solve this math problem: \"Josh decides to try flipping a house.  He buys a house for $80,000 "
        "and then puts in $50,000 in repairs.  This increased the value of the house by 150%.  How much profit did "
        'he make?"'
    )
    assert task.instruction("assistant_sbs_short").endswith(r"in a LaTeX box, for example $\boxed{42}$.")


def test_thousands_separator_gold(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text('{"question": "How many?", "answer": "500+500=<<500+500=1000>>1,000\\n#### 1,000"}\n')
    (only,) = GSM8KTask().load(path)
    assert only.answer == "1000"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("no_final_answer.jsonl", "no_final_answer.jsonl, line 2: field 'answer': no '#### <number>'"),
        ("gold_not_number.jsonl", "gold_not_number.jsonl, line 3: field 'answer': final answer after '####' is not"),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        list(GSM8KTask().load(MALFORMED / name))
    assert expected in str(info.value)


def test_missing_question_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"answer": "#### 1"}\n')
    with pytest.raises(DataError, match="rows.jsonl, line 1: field 'question': missing"):
        list(GSM8KTask().load(path))
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer": "#### 2"}\n')
    with pytest.raises(DataError, match="rows.jsonl, line 2: field 'question': duplicate id"):
        list(GSM8KTask().load(path))


@pytest.mark.parametrize(
    ("text", "belief"),
    [
        (r"Earlier $\boxed{16}$, but the total is $\boxed{18}$.", "18"),
        (r"So she makes $\boxed{\$18}$ a day.", r"\$18"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,000", "1000"),
        ("Therefore, the answer is $18.", "18"),
        ("The answer is 5 apples. No, the answer is 7.", "7"),
        ("The answer is 3 + 4 = 7", None),  # an expression, not a stated answer
        ("The answer is 2x", None),
        ("Janet makes 18 dollars.", None),
        ("Error: extraction network error", None),
        ("", None),
    ],
)
def test_parse_belief(text: str, belief: str | None) -> None:
    assert GSM8KTask().parse_belief(text, example()) == belief


@pytest.mark.parametrize(
    ("reply", "belief"),
    [
        (r"The answer is $\boxed{18}$.", "18"),
        ("The answer is 1,000.", "1000"),
        ("Not sure yet.", None),
        (r"not sure yet, maybe $\boxed{3}$", None),
        ("Error: extraction network error", None),
    ],
)
def test_parse_judge_output(reply: str, belief: str | None) -> None:
    assert GSM8KTask().parse_judge_output(reply, example()) == belief


@pytest.mark.parametrize("spaces", [" " * 1_000, " \n" * 500], ids=["spaces", "spaces and line breaks"])
def test_stated_numbers_after_a_run_of_spaces_are_read_in_linear_time(spaces: str) -> None:
    """The old pattern backtracked through every split of the spaces: 1,000 of them took seconds."""
    start = time.perf_counter()
    assert GSM8KTask().parse_belief("The answer is" + spaces, example()) is None
    assert GSM8KTask().parse_judge_output("#### **" + spaces + "$$" + spaces, example()) is None
    assert time.perf_counter() - start < 0.1
    assert GSM8KTask().parse_belief("The answer is" + spaces + "18.", example()) == "18"


def test_plain_numbers() -> None:
    assert plain_number("1,000") == 1000 and plain_number(r"\$72.00") == 72 and plain_number("72.") == 72
    assert plain_number("3/4") == Fraction(3, 4) and plain_number(r"18\text{ dollars}") == 18
    assert plain_number(r"12\%") == 12 and plain_number("-2.5") == Fraction(-5, 2)
    assert plain_number("1,2") is None and plain_number(r"\frac12") is None and plain_number("7/0") is None
    assert plain_number("9" * 5_000) is None  # past Python's 4,300-digit limit for int(): no number, no ValueError


@pytest.mark.asyncio
async def test_plain_numbers_are_compared_without_the_pool() -> None:
    task = GSM8KTask()
    assert await task.equivalent("72", "72.0", example()) is True
    assert await task.grade("1,000", example("1000")) is True
    assert await task.grade(r"\$18", example()) is True
    assert await task.grade("18.5", example()) is False
    assert task._equivalence._pool is None  # no worker process was started
    task.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [("0.5", r"\frac{1}{2}", True), (r"\frac{36}{2}", "18", True), (r"\frac{1}{3}", "0.5", False)],
)
async def test_latex_goes_to_math_verify(gsm8k_task: GSM8KTask, a: str, b: str, equal: bool) -> None:
    assert await gsm8k_task.equivalent(a, b, example()) is equal


@pytest.mark.asyncio
async def test_compat_agreement_is_string_equality() -> None:
    compat = get_task("gsm8k", compat=True)
    assert await compat.agree("72", "72.0", example()) is False
    assert await compat.agree("72", "72", example()) is True
    assert await compat.grade("72.0", example("72")) is True  # grading is unchanged
    compat.close()
