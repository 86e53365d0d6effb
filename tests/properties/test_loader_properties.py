"""Every task's loader, on generated files: Examples, or a DataError that names the file, the line and the field.

Rows mix plausible values with arbitrary JSON of the wrong types and shapes, lines that are not JSON, JSON nested
100,000 deep, numbers too long for ``int`` and cells past the CSV module's field limit; a real row from the
bundled data is mixed in so that valid files (and duplicate ids) occur too. No load may take over 100 ms.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hostile import FAST
from hypothesis import given
from hypothesis import strategies as st

from coral.errors import DataError
from coral.tasks import TASKS, Example, get_task

ROOT = Path(__file__).resolve().parents[2]

JSONL_FIELDS = {
    "math": ("problem", "answer", "unique_id"),
    "gsm8k": ("question", "answer"),
    "mmlu_pro": ("question", "options", "answer", "answer_index", "question_id"),
    "commonsense_qa": ("id", "question", "answerKey", "choices", "question_concept"),
    "anli": ("uid", "context", "premise", "hypothesis", "label", "tag"),
    "mbpp_cr": ("id", "text", "code", "test_list", "is_correct"),
    "explore_tom": ("story_structure", "infilled_story", "question", "expected_answer", "qprop=nth_order"),
}
"""The fields each JSONL loader reads, so that generated rows reach its checks of every field."""

REAL_ROWS = {
    "math": "data/math/test.jsonl",
    "gsm8k": "data/gsm8k/test.jsonl",
    "mmlu_pro": "data/mmlu_pro/test.jsonl",
    "commonsense_qa": "data/commonsense_qa/dev_rand_split.sample.jsonl",
    "anli": "data/anli/anli_v1.0/R1/dev.jsonl",
    "mbpp_cr": "tests/fixtures/mbpp/mbpp_cr_sample.jsonl",
    "explore_tom": "tests/fixtures/explore_tom/coral_rows.jsonl",
}
NESTED_KEYS = ("stem", "choices", "label", "text", "question_concept", "data", "sample_id")
PLAUSIBLE = ("A", "B", "E", "K", "a", "e", "n", "c", "#### 18", "#### 1,000", "#### x", "r2_test", "", " ", "2.0", "-1")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(PLAUSIBLE)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.sampled_from(NESTED_KEYS + ("label", "text")) | st.text(max_size=4), inner, max_size=5),
    max_leaves=12,
)
deep_json = st.builds(lambda depth: "[" * depth + "]" * depth, st.sampled_from([10, 100_000]))
long_number = st.builds(lambda name: f'{{"{name}": {"9" * 5_000}}}', st.sampled_from(NESTED_KEYS + ("answer_index",)))


def jsonl_files(name: str) -> st.SearchStrategy[str]:
    fields = JSONL_FIELDS[name]
    rows = st.fixed_dictionaries({}, optional={field: values for field in fields}).map(json.dumps)
    real = st.sampled_from((ROOT / REAL_ROWS[name]).read_text(encoding="utf-8").splitlines()[:3])
    line = st.one_of(rows, real, st.text(max_size=30), deep_json, long_number)
    return st.lists(line, max_size=6).map("\n".join)


def csv_files(columns: tuple[str, ...]) -> st.SearchStrategy[str]:
    header = st.lists(st.sampled_from(columns + ("extra",)), min_size=1, max_size=len(columns) + 1, unique=True)
    cell = st.one_of(st.text(max_size=15), st.sampled_from(("", " ", "1", "2.0", "x")), st.just("x" * 200_000))
    rows = st.lists(st.lists(cell, max_size=len(columns) + 2), max_size=5)

    def write(names: list[str], records: list[list[str]], junk: str) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(names)
        writer.writerows(records)
        return buffer.getvalue() + junk

    return st.builds(write, header, rows, st.sampled_from(("", '"unclosed', "a,b\n", "\x00")))


GPQA_COLUMNS = ("Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
TOM_COLUMNS = ("story_structure", "question", "expected_answer", "qprop=nth_order", "sprop=global_idx")
HI_TOM_FIELDS = ("prompting_type", "question_order", "sample_id", "story", "question", "choices", "answer")
HI_TOM_PLAUSIBLE = st.sampled_from(("CoTP", "A. blue_drawer, B. green_crate", "green_crate", 0, 3, 5, "x"))
hi_tom_records = st.one_of(
    st.fixed_dictionaries({}, optional={field: values | HI_TOM_PLAUSIBLE for field in HI_TOM_FIELDS}), values
)
hi_tom_files = st.one_of(
    st.lists(hi_tom_records, max_size=5).map(lambda records: json.dumps({"data": records})),
    values.map(json.dumps),
    deep_json,
    long_number,
    st.text(max_size=30),
)
math_problem_files = st.one_of(
    st.fixed_dictionaries({}, optional={"problem": values, "solution": values | st.just(r"so \boxed{3}")}).map(
        json.dumps
    ),
    deep_json,
    long_number,
    st.text(max_size=30),
)

FORMATS: dict[str, tuple[str, Any]] = {
    **{name: (".jsonl", jsonl_files(name)) for name in JSONL_FIELDS},
    "gpqa": (".csv", csv_files(GPQA_COLUMNS)),
    "explore_tom.csv": (".csv", csv_files(TOM_COLUMNS)),
    "hi_tom": (".json", hi_tom_files),
    "math.problem": (".json", math_problem_files),
}
"""Generated file contents per loader: the task name (a suffix names a second format) -> (file suffix, files)."""


def test_every_registered_task_is_covered() -> None:
    assert {name.split(".")[0] for name in FORMATS} == set(TASKS.names())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loaders")


@pytest.mark.parametrize("loader", sorted(FORMATS))
@FAST
@given(data=st.data())
def test_loaders_give_examples_or_name_file_line_and_field(workdir: Path, loader: str, data: st.DataObject) -> None:
    suffix, files = FORMATS[loader]
    path = workdir / f"{loader.replace('.', '_')}{suffix}"
    path.write_text(data.draw(files, label="file"), encoding="utf-8", errors="surrogatepass")
    task = get_task(loader.split(".")[0])
    try:
        examples = list(task.load(path))
    except DataError as error:
        assert str(path) in str(error)
        check_location(error, path, suffix)
    else:
        assert all(isinstance(example, Example) for example in examples)


def check_location(error: DataError, path: Path, suffix: str) -> None:
    """A line-based file's error names the line; one about a row that is an object or a full record names the field."""
    if suffix == ".json":  # one document: the record (Hi-ToM) or the JSON line, and a field when there is one
        assert error.field is not None or "JSON" in str(error) or "record" in str(error)
        return
    text = path.read_text(encoding="utf-8", errors="surrogatepass")
    if suffix == ".csv" and not text.strip():
        return  # an empty file has no line to name
    assert error.line is not None, str(error)[:300]
    if suffix == ".jsonl":
        lines = io.StringIO(text, newline=None).readlines()
        if json_object(lines[error.line - 1]):
            assert error.field is not None, str(error)[:300]


def json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


