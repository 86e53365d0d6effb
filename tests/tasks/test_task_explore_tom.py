"""ExploreToM loader, prompts and grading, on the SYNTHETIC fixture (tests/fixtures/explore_tom/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task, stable_id
from coral.tasks.explore_tom import ExploreToMTask

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "explore_tom"
CSV = FIXTURES / "synthetic_sample.csv"
JSONL = FIXTURES / "coral_rows.jsonl"
ROW = '"story_structure": "s", "question": "q", "expected_answer": "a"'


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return list(ExploreToMTask().load(CSV))


def test_loads_the_csv(examples: list[Example]) -> None:
    assert [e.answer for e in examples] == [
        "leather bag", "wooden crate", "kitchen", "no", "does not know about it", "knows about it",
    ]
    assert [e.source["nth_order"] for e in examples] == [1, -1, 2, 1, 2, 2]
    first = examples[0]
    assert first.question == "In which container will Beth search for the apple?"
    assert first.id == "0-" + stable_id(first.source["story_structure"], first.question)
    assert examples[3].id.startswith("1-") and len({e.id for e in examples}) == 6
    assert first.source["param=story_type"] == "tomi" and first.source[""] == "0"  # raw row kept, index included


def test_ids_are_stable_and_independent_of_the_story_shown(examples: list[Example]) -> None:
    infilled = list(ExploreToMTask(story_field="infilled_story").load(CSV))
    assert [e.id for e in infilled] == [e.id for e in examples]
    assert [e.id for e in ExploreToMTask().load(CSV)] == [e.id for e in examples]


def test_opening_message(examples: list[Example]) -> None:
    assert ExploreToMTask().opening_message(examples[0]) == (
        "I'm trying to answer this question based on the following story:\n"
        "Story: Beth entered the kitchen. Anne entered the kitchen. Beth moved the apple to the leather bag, which is "
        "also located in the kitchen. Beth left the kitchen. Anne moved the apple to the wooden crate, which is also "
        "located in the kitchen. Anne left the kitchen.\n"
        "Question: In which container will Beth search for the apple?"
    )


def test_story_field_infilled_shows_the_prose() -> None:
    task = ExploreToMTask(story_field="infilled_story")
    first = next(iter(task.load(CSV)))
    message = task.opening_message(first)
    assert message.startswith(
        "I'm trying to answer this question based on the following story:\n"
        "Story: Beth and Anne were tidying up the kitchen after lunch.\nBeth tucked the apple"
    )
    assert message.endswith("Question: In which container will Beth search for the apple?")


def test_story_field_is_validated() -> None:
    with pytest.raises(ValueError, match="story_field must be one of story_structure, infilled_story"):
        ExploreToMTask(story_field="story")
    assert get_task("explore_tom", story_field="infilled_story").story_field == "infilled_story"


def test_coral_jsonl_rows(examples: list[Example]) -> None:
    rows = list(ExploreToMTask().load(JSONL))
    assert [(e.question, e.answer) for e in rows] == [
        (examples[0].question, "leather bag"),
        (examples[4].question, "does not know about it"),
    ]
    assert rows[0].id == stable_id(rows[0].source["story_structure"], rows[0].question)
    assert rows[0].source["nth_order"] is None and rows[1].source["nth_order"] == 2
    task = ExploreToMTask()
    assert task.groups(rows[0]) == {} and task.groups(rows[1]) == {"nth_order": "2"}
    assert ExploreToMTask().opening_message(rows[0]) == ExploreToMTask().opening_message(examples[0])


def test_groups(examples: list[Example]) -> None:
    groups = [ExploreToMTask().groups(e) for e in examples[:3]]
    assert groups == [{"nth_order": "1"}, {"nth_order": "-1"}, {"nth_order": "2"}]


@pytest.mark.asyncio
async def test_grading_each_kind_of_answer(examples: list[Example]) -> None:
    task = ExploreToMTask()
    leather, _, kitchen, no, not_know, knows = examples
    assert await task.grade(task.parse_belief("Short Answer: the leather bag", leather) or "", leather)
    assert await task.grade("in the kitchen", kitchen)
    assert await task.grade("no, she left first", no) and not await task.grade("yes", no)
    assert await task.grade("Eve does not know about it", not_know) and not await task.grade("knows about it", not_know)
    assert await task.grade("knows about it", knows) and not await task.grade("not sure yet", knows)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"story_structure": "s", "question": "q"}\n', "line 1: field 'expected_answer': missing"),
        ('{"story_structure": "s", "question": "q", "expected_answer": " "}\n', "field 'expected_answer': empty"),
        ('{"story_structure": "s", "question": "q", "expected_answer": 3}\n', "expected str, got int"),
        (f'{{{ROW}, "qprop=nth_order": "x"}}\n', "field 'qprop=nth_order': expected an integer"),
        ('{"question": "q", "expected_answer": "a"}\n', "field 'story_structure': missing"),
        (f"{{{ROW}}}\n" * 2, "line 2: field 'question': same story and question as line 1"),
    ],
)
def test_malformed_jsonl(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        list(ExploreToMTask().load(path))


def test_malformed_csv_names_the_record_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('story_structure,question,expected_answer\n"a\nmultiline story",q1,kitchen\n"s",q2,\n')
    with pytest.raises(DataError, match=r"rows\.csv, line 4: field 'expected_answer': empty"):
        list(ExploreToMTask().load(path))
    with pytest.raises(DataError, match="expected a .csv"):
        list(ExploreToMTask().load(tmp_path / "rows.parquet"))


def test_config_builds_with_the_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_modules.trainer import main

    monkeypatch.chdir(ROOT)
    for config in ("configs/ts_explore_tom.yaml", "configs/cot/cot_explore_tom.yaml"):
        cli = main(
            ["--config", config, "--trainer.default_root_dir", str(tmp_path),
             "--data.val_set_init_args.file_path", str(CSV)],
            run=False,
        )
        cli.datamodule.setup("validate")
        task = cli.datamodule.task
        assert isinstance(task, ExploreToMTask) and task.story_field == "story_structure"
        assert len(cli.datamodule.examples) == min(6, cli.datamodule.val_max_instances)
