from __future__ import annotations

from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.gpqa import GPQATask

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gpqa"
CSV = FIXTURES / "gpqa_synthetic.csv"  # synthetic: GPQA's authors ask that real questions not be published


def load(seed: int = 0) -> list[Example]:
    return list(GPQATask(shuffle_seed=seed).load(CSV))


def test_loads_records_with_shuffled_options_and_known_gold() -> None:
    examples = load()
    assert [e.id for e in examples] == ["recSYNTHETIC0001", "recSYNTHETIC0002", "recSYNTHETIC0003", "569cc66adaafbe30"]
    first = examples[0]
    assert first.source["permutation"] == [3, 1, 2, 0]
    assert first.choices == ("0.67 N", "1.5 N", "5 N", "6 N")
    assert first.answer == "D"
    assert first.source["High-level domain"] == "Physics" and first.source["shuffle_seed"] == 0
    for example in examples:  # the gold letter always points at the CSV's correct answer
        assert example.choices[ord(example.answer) - ord("A")] == example.source["Correct Answer"].strip()
    assert examples[2].answer == "C" and examples[2].choices[2] == "tRNA"


def test_multi_line_quoted_cell_and_opening_message() -> None:
    chemistry = load()[1]
    assert chemistry.question.count("\n") == 2 and '"NaCl, 1 mol"' in chemistry.question
    assert chemistry.choices[3] == "Na+ and Cl-"  # the cell's trailing space is stripped
    assert GPQATask().opening_message(chemistry) == (
        'I\'m trying to solve this problem: "SYNTHETIC TEST ITEM (not from GPQA). A chemist dissolves table salt '
        'in water and writes "NaCl, 1 mol" on the flask.\n\nWhich ions are present in the solution?"\n'
        "And the choices are:\n(A) Na and Cl2\n(B) No ions\n(C) Na2+ and Cl2-\n(D) Na+ and Cl-"
    )


def test_permutation_is_reproducible_per_seed_and_changes_with_it() -> None:
    assert [e.source["permutation"] for e in load(0)] == [e.source["permutation"] for e in load(0)]
    assert [e.answer for e in load(0)] == ["D", "D", "C", "D"]
    assert [e.answer for e in load(1)] == ["A", "A", "A", "C"]
    assert [e.source["permutation"] for e in load(1)] != [e.source["permutation"] for e in load(0)]
    # the order depends on the record, not on its position in the file
    assert GPQATask().permutation("recSYNTHETIC0003") == load()[2].source["permutation"]


def test_record_without_id_gets_a_stable_content_hash() -> None:
    last = load()[3]
    assert last.id == load()[3].id and len(last.id) == 16
    assert last.answer == "D" and last.choices[3] == "Mitochondrion"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing_column.csv", "missing_column.csv, line 1: field 'Incorrect Answer 3': missing column"),
        ("empty_answer.csv", "empty_answer.csv, line 6: field 'Correct Answer': empty"),  # after a 4-line record
        ("ragged_row.csv", "ragged_row.csv, line 3: expected 9 cells, got 5"),
    ],
)
def test_malformed_csv_names_file_line_and_field(name: str, expected: str) -> None:
    with pytest.raises(DataError) as info:
        list(GPQATask().load(FIXTURES / "malformed" / name))
    assert expected in str(info.value)


def test_a_missing_file_says_how_to_get_gpqa(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="GPQA is not bundled.*idavidrein/gpqa"):
        list(GPQATask().load(tmp_path / "gpqa_main.csv"))


def test_duplicate_record_ids_fail(tmp_path: Path) -> None:
    header = "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Record ID\n"
    path = tmp_path / "dup.csv"
    path.write_text(header + "q1,a,b,c,d,rec1\nq2,a,b,c,d,rec1\n", encoding="utf-8")
    with pytest.raises(DataError, match="dup.csv, line 3: field 'Record ID': duplicate id 'rec1'"):
        list(GPQATask().load(path))


def test_topic_answer_format_and_letter_parsing() -> None:
    task, example = GPQATask(), load()[0]
    text = task.instruction("assistant_sbs")
    assert "complex PhD-level biology, physics, and chemistry problems" in text
    assert text.endswith('"The correct answer is (B)", with the letter of your choice in place of B.')
    assert task.parse_belief("So the correct answer is (D).", example) == "D"
    assert task.parse_belief("The correct answer is (E).", example) is None  # only four options
    assert task.parse_belief("Error: extraction network error", example) is None
    assert task.parse_judge_output("(B)", example) == "B"
    assert task.parse_judge_output("(E)", example) is None
    assert task.parse_judge_output("Error: extraction network error", example) is None
    assert task.parse_judge_output("Not sure yet.", example) is None


@pytest.mark.asyncio
async def test_grade_and_agree() -> None:
    task, example = GPQATask(), load()[0]
    assert await task.grade("D", example) is True
    assert await task.grade("A", example) is False
    assert await task.agree("B", "B", example) is True


@pytest.mark.parametrize("config", ["configs/ts_gpqa.yaml", "configs/cot/cot_gpqa.yaml"])
def test_configs_build_on_the_synthetic_fixture(config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_modules.trainer import main

    monkeypatch.chdir(ROOT)
    args = ["--config", config, "--data.val_set_init_args.file_path", str(CSV)]
    cli = main([*args, "--data.task_args", "{shuffle_seed: 1}", "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.datamodule.setup("validate")
    assert [e.answer for e in cli.datamodule.examples] == ["A", "A", "A", "C"]
    style = "simple_cot" if "cot/" in config else "assistant_sbs"
    assert cli.datamodule.val_set.teacher_instruction == cli.datamodule.val_set.student_instruction == style
    assert isinstance(get_task("gpqa"), GPQATask)
