from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.mbpp_cr import CHOICES, MBPPCRTask

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "fixtures" / "mbpp" / "mbpp_cr_sample.jsonl"
MALFORMED = ROOT / "tests" / "fixtures" / "mbpp" / "malformed"


@pytest.fixture(scope="module")
def examples() -> dict[str, Example]:
    return {e.id: e for e in MBPPCRTask().load(SAMPLE)}


def test_registered_as_mbpp_cr() -> None:
    task = get_task("mbpp_cr")
    assert isinstance(task, MBPPCRTask)
    assert task.topic == "code reasoning"
    assert 'The correct answer is (B)' in task.instruction("assistant_sbs_short")


def test_loads_rows_with_gold_from_the_execution_label(examples: dict[str, Example]) -> None:
    assert list(examples) == ["11-0", "11-1", "18-0", "18-1", "42-0", "42-1"]
    assert {i: e.answer for i, e in examples.items()} == {
        "11-0": "A", "11-1": "B", "18-0": "A", "18-1": "A", "42-0": "B", "42-1": "B",
    }
    for example in examples.values():
        assert example.choices == CHOICES == ("Yes, the code is correct", "No, the code is incorrect")
        assert example.task == "mbpp_cr"
        assert example.answer == ("A" if example.source["is_correct"] else "B")


def test_opening_message_shows_problem_code_and_tests(examples: dict[str, Example]) -> None:
    assert MBPPCRTask().opening_message(examples["11-1"]) == (
        "I'm trying to determine whether this code correctly solves the problem: "
        '"Write a python function to remove first and last occurrence of a given character from the string."\n\n'
        "The code:\n```python\ndef remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n```\n\n"
        "The tests it must pass:\n```python\n"
        'assert remove_Occ("hello","l") == "heo"\n'
        'assert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n```\n\n'
        "Is this code correct?\n"
        "And the choices are:\n(A) Yes, the code is correct\n(B) No, the code is incorrect"
    )


def test_carriage_returns_of_mbpp_code_are_not_shown(examples: dict[str, Example]) -> None:
    assert "\r\n" in examples["11-0"].source["code"]
    assert "\r" not in MBPPCRTask().opening_message(examples["11-0"])


def test_beliefs_are_graded_as_letters(examples: dict[str, Example]) -> None:
    task, wrong = MBPPCRTask(), examples["11-1"]
    assert task.parse_belief("It drops only the first one. The correct answer is (B)", wrong) == "B"
    assert task.parse_belief("The correct answer is (C)", wrong) is None  # only two options
    assert asyncio.run(task.grade("B", wrong)) is True
    assert asyncio.run(task.grade("A", wrong)) is False
    user = task.extraction_prompt(wrong, "I think it is fine: (A)")[1]["content"]
    assert "s.replace(ch, '', 1)" in user and "(B) No, the code is incorrect" in user


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("is_correct_not_bool.jsonl",
         ["is_correct_not_bool.jsonl", "line 2", "'is_correct'", "expected bool, got str"]),
        ("missing_code.jsonl", ["missing_code.jsonl", "line 1", "'code'", "missing"]),
        ("tests_not_list.jsonl", ["tests_not_list.jsonl", "line 4", "'test_list'", "expected list, got str"]),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: list[str]) -> None:
    with pytest.raises(DataError) as info:
        list(MBPPCRTask().load(MALFORMED / name))
    for part in expected:
        assert part in str(info.value)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"id": 3}, "'id'"),
        ({"text": "  "}, "'text'"),
        ({"test_list": []}, "'test_list'"),
        ({"test_list": ["assert f()", 1]}, "'test_list'"),
        ({"is_correct": 1}, "'is_correct'"),
    ],
)
def test_row_validation(tmp_path: Path, extra: dict, field: str) -> None:
    row = {"id": "1-0", "text": "t", "code": "x = 1", "test_list": ["assert x == 1"], "is_correct": True} | extra
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"rows\.jsonl, line 1: field {field}"):
        list(MBPPCRTask().load(path))


def test_duplicate_ids_fail(tmp_path: Path) -> None:
    lines = SAMPLE.read_text().splitlines()
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
    with pytest.raises(DataError, match=r"dup\.jsonl, line 3: field 'id': duplicate id '11-0'"):
        list(MBPPCRTask().load(path))
