"""Hi-ToM on the bundled real sample (data/hi_tom/README.md): loader, both modes, quirks, raw-file cross-check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from coral.errors import DataError
from coral.tasks import Example, get_task
from coral.tasks.hi_tom import HiToMTask, parse_choices

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "hi_tom" / "Hi-ToM_data_sample.json"
RAW = ROOT / "tests" / "fixtures" / "hi_tom" / "Hi-ToM_data"
VP_INSTRUCTION = (
    "Read the following story and answer the multiple-choice question. Please provide answer without explanations.\n"
)


@pytest.fixture(scope="module")
def examples() -> dict[str, Example]:
    return {e.id: e for e in HiToMTask().load(SAMPLE)}


def test_loads_120_records_24_per_order(examples: dict[str, Example]) -> None:
    assert len(examples) == 120
    assert Counter(e.source["order"] for e in examples.values()) == {0: 24, 1: 24, 2: 24, 3: 24, 4: 24}
    assert list(examples)[:4] == ["0", "1", "20", "21"]
    task = HiToMTask()
    assert {task.groups(e)["order"] for e in examples.values()} == {"0", "1", "2", "3", "4"}


@pytest.mark.parametrize(
    ("sample_id", "order", "question", "answer"),
    [
        ("0", 0, "Where is the lettuce really?", "green_drawer"),
        ("21", 1, "Where does Jacob really think the tomato is?", "blue_container"),
        ("61", 3, "Where does Isabella think Hannah thinks Jacob thinks the tomato is?", "green_box"),
        (
            "1181",
            4,
            "Where does Evelyn think Ella thinks Owen thinks Aiden thinks the melon is?",
            "blue_treasure_chest",
        ),
    ],
)
def test_gold_answers(examples: dict[str, Example], sample_id: str, order: int, question: str, answer: str) -> None:
    example = examples[sample_id]
    assert (example.source["order"], example.question) == (order, question)
    assert example.choices == ()  # answer-only: the choices are not part of the problem
    assert example.answer == answer


def test_opening_message(examples: dict[str, Example]) -> None:
    message = HiToMTask().opening_message(examples["0"])
    assert message.startswith(
        "I'm trying to answer this question based on the following story:\n"
        "Story: 1 Avery, Charlotte, Isabella, Elizabeth and Owen entered the living_room.\n"
        "2 The lettuce is in the green_drawer.\n"
    )
    assert message.endswith(
        "16 Avery, Charlotte, Isabella, Elizabeth and Owen entered the waiting_room.\n"
        "Question: Where is the lettuce really?"
    )
    assert "Choices" not in message and "green_bathtub," not in message


def test_vp_records_keep_their_instruction_sentence(examples: dict[str, Example]) -> None:
    vp = [e for e in examples.values() if e.source["prompting_type"] == "VP"]
    assert len(vp) == 60 and all(e.source["story"].startswith(VP_INSTRUCTION) for e in vp)
    message = HiToMTask().opening_message(examples["300"])
    assert message.startswith(
        f"I'm trying to answer this question based on the following story:\nStory: {VP_INSTRUCTION}"
    )
    assert examples["300"].question == examples["0"].question and examples["300"].answer == examples["0"].answer


def test_prompting_type_selects_one_half() -> None:
    cotp = list(HiToMTask(prompting_type="CoTP").load(SAMPLE))
    assert len(cotp) == 60 and all(e.source["prompting_type"] == "CoTP" for e in cotp)
    assert len(list(HiToMTask(prompting_type="VP").load(SAMPLE))) == 60
    with pytest.raises(ValueError, match="prompting_type"):
        HiToMTask(prompting_type="MC")


def test_parse_choices() -> None:
    raw = json.loads(SAMPLE.read_text())["data"][0]["choices"]
    choices = parse_choices(raw)
    assert len(choices) == 15
    assert choices[:3] == ("blue_drawer", "green_crate", "red_bucket") and choices[-1] == "green_bathtub"
    assert parse_choices("A. x, y, B. z") == ("x, y", "z")  # a comma not followed by "B. " stays in the option
    for bad in ("B. x, C. y", "A. x, C. y", "x, y"):
        with pytest.raises(ValueError):
            parse_choices(bad)


def test_multiple_choice_mode(examples: dict[str, Example]) -> None:
    task = get_task("hi_tom", mode="multiple_choice")
    first = next(iter(task.load(SAMPLE)))
    assert first.answer == "K" and first.choices[10] == "green_drawer" and len(first.choices) == 15
    message = task.opening_message(first)
    assert message.startswith(HiToMTask().opening_message(examples["0"]))
    assert "Question: Where is the lettuce really?\nAnd the choices are:\n(A) blue_drawer\n(B) green_crate\n" in message
    assert "(K) green_drawer\n" in message and message.endswith("(O) green_bathtub")
    assert task.parse_belief("Counting exits... The correct answer is (K).", first) == "K"
    assert task.parse_belief("The correct answer is (P).", first) is None  # only 15 options
    assert task.parse_judge_output("(K)", first) == "K"
    assert "(B)" in task.instruction("assistant_sbs_short")
    user = task.extraction_prompt(first, "(K)")[1]["content"]
    assert "(O) green_bathtub" in user and user.endswith('Extract the answer in ([A-Z]) format, or say "not sure yet".')
    with pytest.raises(ValueError, match="mode must be one of answer_only, multiple_choice"):
        HiToMTask(mode="mc")


@pytest.mark.asyncio
async def test_grading(examples: dict[str, Example]) -> None:
    task, compat, first = HiToMTask(), HiToMTask(compat=True), examples["0"]
    belief = task.parse_belief("Owen put it back last.\nShort Answer: the green drawer", first)
    assert belief == "green drawer" and await task.grade(belief, first)
    assert await task.grade("green_drawer", first) and await task.grade("in the green drawer", first)
    assert not await task.grade("green bathtub", first) and not await task.grade("drawer", first)
    compat_belief = compat.parse_belief("Short Answer: the green drawer", first)
    assert compat_belief == "green_drawer" and await compat.grade(compat_belief, first)
    assert await compat.grade("drawer", first)  # the reference's substring rule
    mc = HiToMTask(mode="multiple_choice")
    mc_first = next(iter(mc.load(SAMPLE)))
    assert await mc.grade("K", mc_first) and not await mc.grade("O", mc_first)
    assert await mc.agree("K", "K", mc_first) and not await mc.agree("K", "O", mc_first)


def _raw_prompt(path: Path) -> dict[str, str]:
    text = path.read_text(encoding="utf-8")
    story = text.split("Story:\n", 1)[1].split("Question: ", 1)[0]
    question, rest = text.split("Question: ", 1)[1].split("\n", 1)
    answer = rest.split("Answer: ", 1)[1].split("\n", 1)[0]
    choices = rest.split("Choices: ", 1)[1].split("\n", 1)[0]
    return {"story": story, "question": question, "answer": answer, "choices": choices}


@pytest.mark.parametrize(
    ("folder", "first_id", "instruction"),
    [("Tell/CoT/length_1/sample_1", 600, ""), ("No_Tell/MC/length_2/sample_1", 400, VP_INSTRUCTION)],
)
def test_json_records_match_the_original_prompt_files(
    examples: dict[str, Example], folder: str, first_id: int, instruction: str
) -> None:
    for order in range(5):
        raw = _raw_prompt(RAW / folder / f"order_{order}.txt")
        example = examples[str(first_id + 20 * order)]
        assert example.source["order"] == order
        assert example.source["story"].rstrip() == instruction + raw["story"].rstrip()  # JSON adds a blank line
        assert example.question == raw["question"] and example.answer == raw["answer"]
        assert example.source["choices"] == raw["choices"]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"choices": "A. x, B. y"}, "field 'answer': 'green_drawer' is not exactly one of the choices"),
        ({"choices": "A. x, C. green_drawer"}, "field 'choices': option B"),
        ({"question_order": 5}, "field 'question_order': expected 0 to 4"),
        ({"sample_id": "0"}, "field 'sample_id': expected int, got str"),
        ({"story": ""}, "field 'story': empty"),
    ],
)
def test_malformed_records(tmp_path: Path, record: dict[str, object], expected: str) -> None:
    good = json.loads(SAMPLE.read_text())["data"][0]
    path = tmp_path / "hi_tom.json"
    path.write_text(json.dumps({"data": [good, {**good, "sample_id": 7, **record}]}))
    with pytest.raises(DataError, match=f"hi_tom.json, record 1: {expected}"):
        list(HiToMTask().load(path))


def test_malformed_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"story": "s"}]')
    with pytest.raises(DataError, match="field 'data'"):
        list(HiToMTask().load(path))
    good = json.loads(SAMPLE.read_text())["data"][0]
    path.write_text(json.dumps({"data": [good, good]}))
    with pytest.raises(DataError, match="record 1: field 'sample_id': duplicate id '0'"):
        list(HiToMTask().load(path))


def test_configs_use_the_bundled_sample(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_modules.trainer import main

    monkeypatch.chdir(ROOT)
    for config, count in (("configs/ts_hi_tom.yaml", 4), ("configs/cot/cot_hi_tom.yaml", 16)):
        cli = main(["--config", config, "--trainer.default_root_dir", str(tmp_path)], run=False)
        cli.datamodule.setup("validate")
        task = cli.datamodule.task
        assert isinstance(task, HiToMTask) and task.mode == "answer_only"
        assert len(cli.datamodule.examples) == count
