from __future__ import annotations

import time
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, MathTask
from coral.tasks.boxed import iter_boxed, last_boxed

ROOT = Path(__file__).resolve().parents[2]
JSONL = ROOT / "data" / "math" / "test.jsonl"
MATH_DIR = ROOT / "tests" / "fixtures" / "math" / "MATH"
MALFORMED = ROOT / "tests" / "fixtures" / "math" / "malformed"


def example(answer: str = "2") -> Example:
    return Example(id="x", task="math", question="What is $1+1$?", answer=answer)


# -- loader ----------------------------------------------------------------------------------------------


def test_loads_prm800k_jsonl() -> None:
    examples = list(MathTask().load(JSONL))
    assert len(examples) == 103
    first = examples[0]
    assert first.id == "test/precalculus/807.json"
    assert first.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert first.question.startswith("Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.")
    assert first.source["level"] == 2
    assert (examples[2].id, examples[2].answer) == ("test/intermediate_algebra/134.json", "-50")
    assert (examples[-1].id, examples[-1].answer) == ("test/geometry/561.json", r"\frac{7}{2}")
    assert len({e.id for e in examples}) == 103


def test_opening_message() -> None:
    first = next(iter(MathTask().load(JSONL)))
    assert MathTask().opening_message(first) == (
        "I'm trying to solve this math problem: \"Convert the point $(0,3)$ in rectangular coordinates to polar "
        "coordinates.  Enter your answer in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$\""
    )


def test_loads_per_problem_directory_in_sorted_order() -> None:
    examples = list(MathTask().load(MATH_DIR))
    assert [e.id for e in examples] == [
        "test/algebra/2517.json",
        "test/counting_and_probability/14.json",
        "test/number_theory/1257.json",
        "test/precalculus/807.json",
    ]
    assert [e.answer for e in examples] == [r"-\frac{35}{9}", r"\frac14", "204_5", r"\left( 3, \frac{\pi}{2} \right)"]
    assert examples[0].source["type"] == "Algebra"


def test_both_formats_agree_on_ids_answers_and_problems() -> None:
    from_jsonl = {e.id: e for e in MathTask().load(JSONL)}
    from_files = list(MathTask().load(MATH_DIR))
    assert len(from_files) == 4
    for example in from_files:
        twin = from_jsonl[example.id]
        assert (example.answer, example.question) == (twin.answer, twin.question)


def test_loads_single_problem_file_with_same_id() -> None:
    (only,) = MathTask().load(MATH_DIR / "test" / "precalculus" / "807.json")
    assert only.id == "test/precalculus/807.json"
    assert only.answer == r"\left( 3, \frac{\pi}{2} \right)"


def test_rows_without_unique_id_get_a_stable_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl"
    path.write_text('{"problem": "What is $1+1$?", "answer": "2"}\n{"problem": "What is $2+2$?", "answer": "4"}\n')
    first = [e.id for e in MathTask().load(path)]
    assert first == [e.id for e in MathTask().load(path)]
    assert len(set(first)) == 2 and all(len(i) == 16 for i in first)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing_problem.jsonl", ["missing_problem.jsonl", "line 2", "'problem'", "missing"]),
        ("answer_not_string.jsonl", ["answer_not_string.jsonl", "line 3", "'answer'", "expected str, got int"]),
        ("invalid_json.jsonl", ["invalid_json.jsonl", "line 2", "not valid JSON"]),
        ("no_boxed.json", ["no_boxed.json", "'solution'", "boxed"]),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: list[str]) -> None:
    with pytest.raises(DataError) as info:
        list(MathTask().load(MALFORMED / name))
    for part in expected:
        assert part in str(info.value)


def test_empty_directory_and_duplicate_ids_fail(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .json problem files"):
        list(MathTask().load(tmp_path))
    path = tmp_path / "dup.jsonl"
    row = '{"problem": "a", "answer": "1", "unique_id": "u"}\n'
    path.write_text(row + row.replace('"a"', '"b"'))
    with pytest.raises(DataError, match="dup.jsonl, line 2: field 'unique_id': duplicate id 'u'"):
        list(MathTask().load(path))


# -- boxed answers and beliefs ---------------------------------------------------------------------------


def test_last_boxed_is_brace_balanced() -> None:
    assert last_boxed(r"so $\boxed{\frac{1}{2}}$. Then") == r"\frac{1}{2}"
    assert last_boxed(r"first \boxed{1}, finally \fbox{ 2 }") == "2"
    assert last_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}.") == r"\left( 3, \frac{\pi}{2} \right)"
    assert last_boxed(r"\boxed{ }") is None
    assert last_boxed(r"no box here") is None
    assert last_boxed(r"\boxed{3} and an unclosed \boxed{4") == "3"


def test_boxes_are_found_in_one_pass() -> None:
    """The old scanner restarted from every box: 21 KB of unclosed boxes took over a second, 80 KB over a minute."""
    unclosed = r"\boxed{" * 3_000
    start = time.perf_counter()
    assert iter_boxed(unclosed) == []
    assert time.perf_counter() - start < 0.1
    nested = r"\boxed{" * 3 + "1" + "}" * 3
    assert iter_boxed(nested) == [(0, r"\boxed{\boxed{1}}"), (7, r"\boxed{1}"), (14, "1")]  # in order of start
    assert iter_boxed(r"} {\boxed{a}} \fbox{b") == [(3, "a")]  # stray and unclosed braces are skipped


@pytest.mark.parametrize(
    "text",
    [r"\boxed{" * 2_000, "{" * 100_000, r"\boxed{" + "{" * 100_000, "}" * 100_000],
    ids=["unclosed boxes", "open braces", "one deep box", "closing braces"],
)
def test_parsers_read_hostile_turns_in_linear_time(text: str) -> None:
    start = time.perf_counter()
    assert MathTask().parse_belief(text, example()) is None
    assert MathTask().parse_judge_output(text, example()) is None
    assert MathTask(compat=True).parse_judge_output(text, example()) is None
    assert time.perf_counter() - start < 0.1


def test_parse_belief_takes_the_last_box() -> None:
    task = MathTask()
    text = r"Earlier I said $\boxed{3}$ but the answer is $\boxed{\frac{\sqrt{3}}{3}}$."
    assert task.parse_belief(text, example()) == r"\frac{\sqrt{3}}{3}"
    assert task.parse_belief("I think it is 3.", example()) is None
    assert task.parse_belief("Error: extraction network error", example()) is None


def test_parse_judge_output() -> None:
    task = MathTask()
    assert task.parse_judge_output(r"The answer is $\boxed{-\frac{35}{9}}$.", example()) == r"-\frac{35}{9}"
    assert task.parse_judge_output("Not sure yet.", example()) is None
    assert task.parse_judge_output(r"NOT SURE YET, maybe $\boxed{3}$", example()) is None
    assert task.parse_judge_output(r"$\boxed{3}$ (I am not sure yet about units)", example()) == "3"
    assert task.parse_judge_output("The response says 3.", example()) is None


def test_extraction_prompt_has_a_real_system_message() -> None:
    messages = MathTask().extraction_prompt(example(), r"So it is $\boxed{2}$.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "final answer" in messages[0]["content"] and "not sure yet" in messages[0]["content"]
    user = messages[1]["content"]
    assert "What is $1+1$?" in user and r"So it is $\boxed{2}$." in user
    assert user.endswith('Extract the answer in $\\boxed{}$ format, or say "not sure yet".')


# -- grading (math-verify in worker processes) -----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac12", "0.5", True),
        (r"\dfrac{1}{2}", "1/2", True),
        (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),
        ("2", "3", False),
        (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
        ("x + 1", "1+x", True),
        ("not a number at all", "3", False),
    ],
)
async def test_equivalent(math_task: MathTask, a: str, b: str, equal: bool) -> None:
    assert await math_task.equivalent(a, b, example()) is equal


@pytest.mark.asyncio
async def test_grade_against_gold(math_task: MathTask) -> None:
    gold = example(answer=r"\left( 3, \frac{\pi}{2} \right)")
    assert await math_task.grade(r"(3, \frac{\pi}{2})", gold) is True
    assert await math_task.grade(r"(3, \pi)", gold) is False


@pytest.mark.asyncio
async def test_agreement_compat_is_string_equality(math_task: MathTask) -> None:
    assert await math_task.agree("0.5", r"\frac12", example()) is True
    compat = MathTask(compat=True)
    assert await compat.agree("0.5", r"\frac12", example()) is False
    assert await compat.agree("0.5", "0.5", example()) is True
    assert await compat.grade("0.5", example(answer=r"\frac12")) is True  # grading stays math-verify
    compat.close()


@pytest.mark.parametrize(
    ("reply", "belief"),
    [
        ("The answer is $\\frac{124^{\\circ}}{2}$.", "\\frac{124^{\\circ}}{2}"),
        ("The final answer is: $$x = 2$$", "x = 2"),
        ("not sure yet. The answer is $3$", None),
        ("The answer is 5", None),
    ],
)
def test_judge_replies_that_state_an_unboxed_latex_answer(reply, belief):
    assert MathTask().parse_judge_output(reply, None) == belief


@pytest.mark.parametrize(
    ("reply", "default", "compat"),
    [
        (r"$\boxed{5}$", "5", "5"),
        (r"\boxed{5}", "5", None),  # without dollar signs the reference's regex found nothing: "Error: <reply>"
        (r"The answer is $5$.", "5", None),
        (r"$\boxed{5}$ but not sure yet", "5", None),  # "not sure yet" anywhere: unsure
        (r"$\boxed{1}$ or $\boxed{2}$", "1", "2"),  # greedy to the line's last "}$"; its matcher took the last box
        ("$\\boxed{1\n}$ then $\\boxed{2}$", "1", "2"),  # ".*" stops at a line break: the next line's box
        (r"$\boxed{\frac{1}{2}}$.", r"\frac{1}{2}", r"\frac{1}{2}"),
        (r"$\boxed{}$", None, ""),  # an empty box was a valid (wrong) belief
        ("not sure yet", None, None),
    ],
)
def test_compat_reads_the_judge_as_the_reference_did(reply: str, default: str | None, compat: str | None) -> None:
    assert MathTask().parse_judge_output(reply, example()) == default
    assert MathTask(compat=True).parse_judge_output(reply, example()) == compat
