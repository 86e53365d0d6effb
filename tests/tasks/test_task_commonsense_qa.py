from __future__ import annotations

import json
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.commonsense_qa import CommonsenseQATask

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "data" / "commonsense_qa" / "dev_rand_split.sample.jsonl"  # original tau-nlp schema
HF = ROOT / "tests" / "fixtures" / "commonsense_qa" / "hf_format" / "validation.sample.jsonl"
MALFORMED = ROOT / "tests" / "fixtures" / "commonsense_qa" / "malformed"


@pytest.fixture(scope="module")
def dev() -> list[Example]:
    return list(CommonsenseQATask().load(DEV))


def test_loads_the_original_schema(dev: list[Example]) -> None:
    assert len(dev) == 24 and len({e.id for e in dev}) == 24
    first = dev[0]
    assert (first.id, first.answer) == ("ef3d5d35128678937c36438466e0fc93", "E")
    assert first.question == "The program kept getting errors, the amateur end user began to what?"
    assert first.choices == ("get mad", "compile", "debug", "write code", "get frustrated")
    assert first.source == {"schema": "tau-nlp", "question_concept": "program"}
    assert [e.answer for e in dev].count("C") == 7


def test_loads_the_hugging_face_schema() -> None:
    examples = list(CommonsenseQATask().load(HF))
    assert len(examples) == 100
    first = examples[0]
    assert (first.id, first.answer) == ("b8c0a4703079cf661d7261a60a1bcbff", "B")
    assert first.choices == ("doctor", "bookstore", "market", "train station", "mortuary")
    assert first.source == {"schema": "huggingface", "question_concept": "magazines"}


def test_both_schemas_give_the_same_example(dev: list[Example]) -> None:
    from_hf = {e.id: e for e in CommonsenseQATask().load(HF)}
    shared = [e for e in dev if e.id in from_hf]
    assert [e.id for e in shared] == ["8369adc4b4710d00f917d80a75d844d7", "11416df796f63d2f0dddc846b9c139d3"]
    for example in shared:
        assert example == from_hf[example.id]  # id, question, gold and choices; source (schema) is not compared
    assert shared[0].answer == "C" and shared[0].choices[2] == "read newspapers"


def test_opening_message_and_topic(dev: list[Example]) -> None:
    task = CommonsenseQATask()
    assert task.opening_message(dev[0]) == (
        'I\'m trying to solve this problem: "The program kept getting errors, the amateur end user began to what?"\n'
        "And the choices are:\n(A) get mad\n(B) compile\n(C) debug\n(D) write code\n(E) get frustrated"
    )
    assert "commonsense question answering problems" in task.instruction("assistant_sbs_short")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("labels_out_of_order.jsonl", "line 2: field 'question.choices': expected labels A-E in order"),
        ("missing_stem.jsonl", "line 1: field 'question.stem': missing"),
        ("answer_key_out_of_range.jsonl", "line 1: field 'answerKey': expected a letter A-E (5 options), got 'F'"),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        list(CommonsenseQATask().load(MALFORMED / name))
    assert f"{name}, {expected}" in str(info.value)


FIVE = {"label": ["A", "B", "C", "D", "E"], "text": ["v", "w", "x", "y", "z"]}


def hf_row(**changes: object) -> dict[str, object]:
    return {"id": "a", "question": "q", "question_concept": "c", "choices": FIVE, "answerKey": "A", **changes}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        (hf_row(choices={"label": ["A", "B"], "text": ["x", "y"]}), "'choices'"),
        (hf_row(choices={"label": FIVE["label"]}), "'choices.text'"),
        (hf_row(choices={**FIVE, "text": ["v", "w", "x", "y", ""]}), "'choices'"),
        (hf_row(answerKey=""), "'answerKey'"),  # the unlabeled test split
        (hf_row(question=3), "'question'"),
        ({"question": "q", "answerKey": "A"}, "'id'"),
    ],
)
def test_row_validation(tmp_path: Path, row: dict[str, object], field: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"rows.jsonl, line 1: field {field}"):
        list(CommonsenseQATask().load(path))


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The correct answer is (E).", "E"),
        ("The correct answer is (F).", None),  # five options only
        ("Error: extraction network error", None),  # the reference read "E" here
        ("I think it is E.", None),
    ],
)
def test_parse_belief(dev: list[Example], text: str, letter: str | None) -> None:
    assert get_task("commonsense_qa").parse_belief(text, dev[0]) == letter


@pytest.mark.asyncio
async def test_parse_judge_output_and_grade(dev: list[Example]) -> None:
    task, first = CommonsenseQATask(), dev[0]
    assert task.parse_judge_output("(E)", first) == "E"
    assert task.parse_judge_output("(F)", first) is None
    assert task.parse_judge_output("Error: extraction network error", first) is None
    assert await task.grade("E", first) is True
    assert await task.grade("A", first) is False
