from __future__ import annotations

import json
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.anli import CHOICES, ANLITask, round_from_path

ROOT = Path(__file__).resolve().parents[2]
ANLI = ROOT / "data" / "anli" / "anli_v1.0"
MALFORMED = ROOT / "tests" / "fixtures" / "anli" / "malformed"


@pytest.fixture(scope="module")
def r1_test() -> list[Example]:
    return list(ANLITask().load(ANLI / "R1" / "test.jsonl"))


@pytest.mark.parametrize(
    ("round_", "split", "count", "first_uid", "first_answer"),
    [
        (1, "test", 40, "f8219af1-1e48-4dcf-8cf8-35aec6ec8dee", "C"),
        (1, "dev", 20, "420be467-aabe-48d4-8346-60e1c830fe81", "B"),
        (2, "test", 40, "96c5633d-c1cd-41f8-bb44-857650691181", "A"),
        (2, "dev", 20, "48fea5c0-4b8e-4333-879a-516531b0573b", "C"),
        (3, "test", 40, "38d3a09f-301b-4584-ada8-9120a3933c73", "A"),
        (3, "dev", 20, "107c14f0-ff2b-4499-ab46-ff2979903719", "C"),
    ],
)
def test_loads_each_round_and_records_it(
    round_: int, split: str, count: int, first_uid: str, first_answer: str
) -> None:
    examples = list(ANLITask().load(ANLI / f"R{round_}" / f"{split}.jsonl"))
    assert len(examples) == count and len({e.id for e in examples}) == count
    assert (examples[0].id, examples[0].answer) == (first_uid, first_answer)
    assert {e.source["round"] for e in examples} == {round_}
    assert all(e.choices == ("entailment", "neutral", "contradiction") for e in examples)


def test_label_counts_match_the_sample(r1_test: list[Example]) -> None:
    answers = [e.answer for e in r1_test]
    assert (answers.count("A"), answers.count("B"), answers.count("C")) == (17, 14, 9)  # e / n / c


def test_opening_message(r1_test: list[Example]) -> None:
    second = r1_test[1]
    assert second.answer == "A" and second.source["label"] == "e"
    assert ANLITask().opening_message(second) == (
        "I'm trying to solve this natural language inference problem:\n"
        "Premise: Charlie Catlett (born 1960) is a Senior Computer Scientist at Argonne National Laboratory and a "
        "Senior Fellow in the Computation Institute, a joint institute of Argonne National Laboratory and The "
        "University of Chicago, and a Senior Fellow at the University of Chicago's Harris School of Public Policy.\n"
        "Hypothesis: Charlie Catlett has two vowels in his last name.\n"
        "Given the premise, is the hypothesis definitely true (entailment), definitely false (contradiction), or "
        "neither (neutral)?\n"
        "And the choices are:\n(A) entailment\n(B) neutral\n(C) contradiction"
    )


def test_extraction_prompt_shows_premise_hypothesis_and_options(r1_test: list[Example]) -> None:
    messages = ANLITask().extraction_prompt(r1_test[0], "It contradicts: (C).")
    user = messages[1]["content"]
    assert "Premise: Saleby is a village" in user and "Hypothesis: Thoresthorpe is 1 mi south of Alford" in user
    assert "(C) contradiction" in user and user.endswith('or say "not sure yet".')


def test_round_from_tag_and_other_formats(tmp_path: Path) -> None:
    assert round_from_path("x/anli_v1.0/R3/dev.jsonl") == 3 and round_from_path("x/dev.jsonl") is None
    rows = [
        {"uid": "a", "context": "P.", "hypothesis": "H.", "label": "n", "tag": "r2_dev"},
        {"uid": "b", "premise": "P.", "hypothesis": "H.", "label": 2},  # Hugging Face export
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    first, second = ANLITask().load(path)
    assert (first.answer, first.source["round"]) == ("B", 2)
    assert (second.answer, second.source["round"]) == ("C", None)
    assert second.question.startswith("Premise: P.\nHypothesis: H.\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bad_label.jsonl", "bad_label.jsonl, line 2: field 'label': expected 'e', 'n' or 'c'"),
        ("missing_hypothesis.jsonl", "missing_hypothesis.jsonl, line 1: field 'hypothesis': missing"),
    ],
)
def test_malformed_input_names_file_line_and_field(name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        list(ANLITask().load(MALFORMED / name))
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"uid": "a", "context": "  ", "hypothesis": "h", "label": "e"}', "field 'context': empty"),
        ('{"uid": "a", "context": "p", "hypothesis": "h", "label": true}', "field 'label'"),
        ('{"uid": 7, "context": "p", "hypothesis": "h", "label": "e"}', "field 'uid': expected str"),
        ('{"uid": "a", "context": "p", "hypothesis": "h", "label": "e"}\n' * 2, "line 2: field 'uid': duplicate"),
    ],
)
def test_row_validation(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=expected):
        list(ANLITask().load(path))


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The correct answer is (C).", "C"),
        ("The correct answer is (D).", None),  # three options only
        ("Error: extraction network error", None),
        ("It is a contradiction.", None),
    ],
)
def test_parse_belief(r1_test: list[Example], text: str, letter: str | None) -> None:
    assert get_task("anli").parse_belief(text, r1_test[0]) == letter


@pytest.mark.asyncio
async def test_judge_output_and_grade(r1_test: list[Example]) -> None:
    task, first = ANLITask(), r1_test[0]
    assert len(CHOICES) == 3
    assert task.parse_judge_output("(C)", first) == "C"
    assert task.parse_judge_output("(D)", first) is None
    assert task.parse_judge_output("Error: extraction network error", first) is None
    assert await task.grade("C", first) is True
    assert await task.grade("A", first) is False
