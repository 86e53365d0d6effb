from __future__ import annotations

from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, MMLUProTask

ROOT = Path(__file__).resolve().parents[2]
JSONL = ROOT / "data" / "mmlu_pro" / "test.jsonl"
MALFORMED = ROOT / "tests" / "fixtures" / "mmlu_pro" / "malformed"


@pytest.fixture(scope="module")
def examples() -> dict[str, Example]:
    return {e.id: e for e in MMLUProTask().load(JSONL)}


def test_loads_all_rows_with_question_ids(examples: dict[str, Example]) -> None:
    assert len(examples) == 154
    assert list(examples)[:2] == ["168", "213"]
    first = examples["168"]
    assert (first.answer, len(first.choices), first.choices[3]) == ("D", 10, "19.7%")
    four = examples["1409"]
    assert four.answer == "B"
    assert four.choices == (
        "There is no case or controversy.",
        "The manufacturer's case is moot.",
        "The manufacturer lacks standing.",
        "The case is not ripe.",
    )


def test_opening_message(examples: dict[str, Example]) -> None:
    assert MMLUProTask().opening_message(examples["168"]) == (
        'I\'m trying to solve this problem: "A water bed sells for $330 cash or $40 down and $10.50 a month for '
        '36 months. Find the annual interest rate charged."\n'
        "And the choices are:\n(A) 14.9%\n(B) 16.3%\n(C) 18.2%\n(D) 19.7%\n(E) 21.4%\n(F) 15.5%\n(G) 23.6%\n"
        "(H) 22.3%\n(I) 20.5%\n(J) 17.8%"
    )


def test_extraction_prompt(examples: dict[str, Example]) -> None:
    messages = MMLUProTask().extraction_prompt(examples["1409"], "I'd go with standing: (C).")
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert "WEAKEST defense for the city?" in user
    assert "(D) The case is not ripe." in user
    assert "I'd go with standing: (C)." in user
    assert user.endswith('Extract the answer in ([A-Z]) format, or say "not sure yet".')


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("answer_out_of_range.jsonl", ["answer_out_of_range.jsonl", "line 2", "'answer'", "'K'"]),
        ("options_not_list.jsonl", ["options_not_list.jsonl", "line 1", "'options'", "expected list, got str"]),
        ("too_many_options.jsonl", ["too_many_options.jsonl", "line 3", "'options'", "got 11"]),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: list[str]) -> None:
    with pytest.raises(DataError) as info:
        list(MMLUProTask().load(MALFORMED / name))
    for part in expected:
        assert part in str(info.value)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"question": "q", "options": ["a", "b", "c", "d"], "answer": "E"}', "'answer'"),
        ('{"question": "q", "options": ["a", "b"], "answer": "b"}', "'answer'"),
        ('{"question": "q", "options": [], "answer": "A"}', "'options'"),
        ('{"question": "q", "options": ["a", 2], "answer": "A"}', "'options'"),
        ('{"options": ["a", "b"], "answer": "A"}', "'question'"),
        ('{"question": "q", "options": ["a", "b"], "answer": "A", "answer_index": 1}', "'answer_index'"),
    ],
)
def test_row_validation(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=f"rows.jsonl, line 1: field {field}"):
        list(MMLUProTask().load(path))


def test_rows_without_question_id_get_a_stable_content_hash(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q", "options": ["a", "b"], "answer": "B"}\n')
    (example,) = MMLUProTask().load(path)
    (again,) = MMLUProTask().load(path)
    assert example.id == again.id and len(example.id) == 16


@pytest.mark.asyncio
async def test_grade_and_agree(examples: dict[str, Example]) -> None:
    task, first = MMLUProTask(), examples["168"]
    assert await task.grade("D", first) is True
    assert await task.grade("E", first) is False
    assert await task.agree("C", "C", first) is True
    assert await task.agree("C", "D", first) is False
