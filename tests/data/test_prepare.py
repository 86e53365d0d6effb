"""``python -m coral.data prepare``: the paper's splits from real samples, deterministic, validated, all-or-nothing."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coral.data import MANIFEST, PREPARE_VERSION, PrepareError, prepare_dataset
from coral.data import prepare as prepare_module
from coral.data.__main__ import main
from coral.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
MATH_DIR = FIXTURES / "math" / "MATH_sample"
PRM800K_TEST = FIXTURES / "math" / "prm800k_test.jsonl"
MMLU_PRO = FIXTURES / "mmlu_pro" / "test.jsonl"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["prepare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ids(task: str, path: Path) -> list[str]:
    return [example.id for example in get_task(task).load(path)]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_bytes(path: Path) -> dict[str, bytes]:
    return {item.name: item.read_bytes() for item in sorted(path.iterdir())}


def requires(task: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(task not in TASKS.names(), reason=f"task {task!r} is not registered in this checkout")


# -- MMLU-Pro: seeded 90/10 resplit ----------------------------------------------------------------------


def test_mmlu_pro_resplits_154_rows_into_139_and_15(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mmlu_pro", "--source", MMLU_PRO, "--out", tmp_path / "mmlu_pro")
    assert code == 0
    assert "154 rows" in out and "139 rows" in out and "15 rows" in out
    train = ids("mmlu_pro", tmp_path / "mmlu_pro" / "train.jsonl")
    test = ids("mmlu_pro", tmp_path / "mmlu_pro" / "test.jsonl")
    assert (len(train), len(test)) == (139, 15) == (round(154 * 0.9), 154 - round(154 * 0.9))
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(ids("mmlu_pro", MMLU_PRO))
    # rows are the source's rows, unchanged, in the shuffled order
    source = {str(row["question_id"]): row for row in jsonl(MMLU_PRO)}
    written = jsonl(tmp_path / "mmlu_pro" / "train.jsonl") + jsonl(tmp_path / "mmlu_pro" / "test.jsonl")
    assert all(row == source[str(row["question_id"])] for row in written)
    assert list(written[0]) == list(source[train[0]])  # key order kept
    assert train != sorted(train, key=int)


def test_same_seed_gives_byte_identical_folders(tmp_path: Path) -> None:
    prepare_dataset("mmlu_pro", [MMLU_PRO], tmp_path / "a", seed=7)
    prepare_dataset("mmlu_pro", [MMLU_PRO], tmp_path / "b", seed=7)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    assert set(folder_bytes(tmp_path / "a")) == {"train.jsonl", "test.jsonl", MANIFEST}


def test_another_seed_assigns_rows_differently(tmp_path: Path) -> None:
    prepare_dataset("mmlu_pro", [MMLU_PRO], tmp_path / "seed0", seed=0)
    prepare_dataset("mmlu_pro", [MMLU_PRO], tmp_path / "seed1", seed=1)
    test0 = set(ids("mmlu_pro", tmp_path / "seed0" / "test.jsonl"))
    test1 = set(ids("mmlu_pro", tmp_path / "seed1" / "test.jsonl"))
    assert len(test0) == len(test1) == 15 and test0 != test1


def test_manifest_pins_sources_and_outputs(tmp_path: Path) -> None:
    returned = prepare_dataset("mmlu_pro", [MMLU_PRO], tmp_path / "out", seed=3)
    text = (tmp_path / "out" / MANIFEST).read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert manifest == returned
    assert text == json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert (manifest["task"], manifest["seed"], manifest["prepare_version"]) == ("mmlu_pro", 3, PREPARE_VERSION)
    assert manifest["sources"] == [{"path": str(MMLU_PRO), "rows": 154, "sha256": sha256(MMLU_PRO)}]
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 139), ("test.jsonl", 15)]
    for output in manifest["outputs"]:
        assert output["sha256"] == sha256(tmp_path / "out" / output["path"])
    assert "random.Random(seed)" in manifest["split_rule"] and "0.9" in manifest["split_rule"]
    assert "time" not in text.lower()


# -- MATH: train, and the first 1k test problems ------------------------------------------------------------


def test_math_from_the_original_folder_writes_prm800k_rows(tmp_path: Path) -> None:
    manifest = prepare_dataset("math", [MATH_DIR], tmp_path / "math")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 105), ("test.jsonl", 35)]
    assert [s["path"] for s in manifest["sources"]] == [str(MATH_DIR / "train"), str(MATH_DIR / "test")]
    # same ids (= PRM800K unique_id), questions and gold answers as reading the per-problem files
    for split in ("train", "test"):
        original = list(get_task("math").load(MATH_DIR / split))
        prepared = list(get_task("math").load(tmp_path / "math" / f"{split}.jsonl"))
        assert [(e.id, e.question, e.answer) for e in prepared] == [(e.id, e.question, e.answer) for e in original]
    # the 35 test problems are PRM800K test lines: the rows written are exactly PRM800K's rows for them
    prm800k = {row["unique_id"]: row for row in jsonl(PRM800K_TEST)}
    written = jsonl(tmp_path / "math" / "test.jsonl")
    assert all(row == prm800k[row["unique_id"]] for row in written)
    assert list(written[0]) == ["problem", "solution", "answer", "subject", "level", "unique_id"]
    assert all(isinstance(row["level"], int) for row in jsonl(tmp_path / "math" / "train.jsonl"))


def test_math_from_prm800k_jsonl(tmp_path: Path) -> None:
    prepare_dataset("math", [MATH_DIR], tmp_path / "from_dir")
    train = tmp_path / "from_dir" / "train.jsonl"
    manifest = prepare_dataset("math", [train, PRM800K_TEST], tmp_path / "math")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 105), ("test.jsonl", 103)]
    assert jsonl(tmp_path / "math" / "test.jsonl") == jsonl(PRM800K_TEST)  # rows and order unchanged
    assert (tmp_path / "math" / "train.jsonl").read_bytes() == train.read_bytes()
    assert ids("math", tmp_path / "math" / "test.jsonl") == ids("math", PRM800K_TEST)


def test_math_test_split_is_the_first_problems_in_source_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare_module, "MATH_TEST_SIZE", 10)
    prepare_dataset("math", [MATH_DIR], tmp_path / "from_dir")
    assert ids("math", tmp_path / "from_dir" / "test.jsonl") == ids("math", MATH_DIR / "test")[:10]
    assert ids("math", tmp_path / "from_dir" / "test.jsonl")[:3] == [
        "test/algebra/1082.json",
        "test/algebra/1519.json",
        "test/algebra/24.json",  # sorted path order is lexicographic, as the loader reads a folder
    ]
    prepare_dataset("math", [tmp_path / "from_dir" / "train.jsonl", PRM800K_TEST], tmp_path / "from_jsonl")
    assert ids("math", tmp_path / "from_jsonl" / "test.jsonl") == ids("math", PRM800K_TEST)[:10]


def test_math_train_leaves_out_test_problems(tmp_path: Path) -> None:
    """PRM800K's train.jsonl holds 4.5k MATH test problems; the paper's train set is MATH's 7.5k train problems."""
    prepare_dataset("math", [MATH_DIR], tmp_path / "from_dir")
    mixed = tmp_path / "prm800k_train.jsonl"
    test_lines = PRM800K_TEST.read_text(encoding="utf-8").splitlines(keepends=True)[:5]
    mixed.write_text((tmp_path / "from_dir" / "train.jsonl").read_text(encoding="utf-8") + "".join(test_lines))
    manifest = prepare_dataset("math", [mixed, MATH_DIR / "test"], tmp_path / "math")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 105), ("test.jsonl", 35)]
    assert manifest["notes"] == ["train: left out 5 MATH test problems found in the train source"]
    assert not any(i.startswith("test/") for i in ids("math", tmp_path / "math" / "train.jsonl"))


# -- bad input: exit 2, clear message, nothing written -------------------------------------------------------


def _corrupt_line(source: Path, target: Path, line: int, field: str) -> Path:
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    row = json.loads(lines[line - 1])
    del row[field]
    lines[line - 1] = json.dumps(row, ensure_ascii=False) + "\n"
    target.write_text("".join(lines), encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("task", "source", "field"), [("mmlu_pro", MMLU_PRO, "options"), ("math", PRM800K_TEST, "problem")]
)
def test_malformed_row_exits_2_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], task: str, source: Path, field: str
) -> None:
    bad = _corrupt_line(source, tmp_path / "bad.jsonl", line=7, field=field)
    sources = [bad] if task == "mmlu_pro" else [PRM800K_TEST, bad]
    (tmp_path / "runs").mkdir()
    code, out, err = run(capsys, task, "--source", *sources, "--out", tmp_path / "runs" / task)
    assert code == 2 and out == ""
    assert f"{bad}, line 7: field {field!r}: missing" in err
    assert list((tmp_path / "runs").iterdir()) == []  # no output folder, no staging folder left behind


def test_command_line_exit_status_is_2(tmp_path: Path) -> None:
    bad = _corrupt_line(MMLU_PRO, tmp_path / "bad.jsonl", line=3, field="answer")
    out = tmp_path / "o"
    command = [sys.executable, "-m", "coral.data", "prepare", "mmlu_pro", "--source", str(bad), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "libs")}
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "line 3: field 'answer': missing" in result.stderr and "nothing was written" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(("name", "suggestion"), [("mmlu-pro", "mmlu_pro"), ("maths", "math"), ("hitom", "hi_tom")])
def test_unknown_task_suggests_close_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, suggestion: str
) -> None:
    code, _, err = run(capsys, name, "--source", MMLU_PRO, "--out", tmp_path / "out")
    assert code == 2
    assert f"unknown task {name!r}; did you mean" in err and suggestion in err
    assert not (tmp_path / "out").exists()


def test_rule_for_a_task_not_registered_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(prepare_module.PREPARERS, "not_yet_a_task", prepare_module.prepare_mmlu_pro)
    with pytest.raises(PrepareError, match="unknown task 'not_yet_a_task': no module in coral.tasks registers it"):
        prepare_dataset("not_yet_a_task", [MMLU_PRO], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mbpp_cr_points_to_its_builder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "mbpp_cr", "--source", tmp_path / "anything.jsonl", "--out", tmp_path / "out")
    assert code == 2 and "python -m coral.synthesis.mbpp_cr_builder" in err
    assert not (tmp_path / "out").exists()


def test_missing_source_and_wrong_source_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "mmlu_pro", "--source", tmp_path / "nope.jsonl", "--out", tmp_path / "out")
    assert code == 2 and f"source not found: {tmp_path / 'nope.jsonl'}" in err
    code, _, err = run(capsys, "mmlu_pro", "--source", MMLU_PRO, MMLU_PRO, "--out", tmp_path / "out")
    assert code == 2 and "exactly one --source" in err
    code, _, err = run(capsys, "math", "--source", MMLU_PRO, "--out", tmp_path / "out")
    assert code == 2 and "not a MATH/ root folder" in err
    assert not (tmp_path / "out").exists()


def test_existing_folder_keeps_other_files_and_never_overwrites_a_source(tmp_path: Path) -> None:
    out = tmp_path / "mmlu_pro"
    out.mkdir()
    (out / "README.md").write_text("kept\n")
    (out / "test.jsonl").write_text("old\n")
    prepare_dataset("mmlu_pro", [MMLU_PRO], out)
    assert (out / "README.md").read_text() == "kept\n"
    assert len(ids("mmlu_pro", out / "test.jsonl")) == 15
    source = out / "test.jsonl"
    before = source.read_bytes()
    with pytest.raises(PrepareError, match="is also a source"):
        prepare_dataset("mmlu_pro", [source], out)
    assert source.read_bytes() == before


# -- the other tasks, where their modules exist ---------------------------------------------------------------


@requires("gsm8k")
def test_gsm8k_keeps_official_splits(tmp_path: Path) -> None:
    sources = [FIXTURES / "gsm8k" / "test.jsonl", FIXTURES / "gsm8k" / "train.jsonl"]
    manifest = prepare_dataset("gsm8k", sources, tmp_path / "gsm8k")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 20), ("test.jsonl", 30)]
    for split in ("train", "test"):
        assert jsonl(tmp_path / "gsm8k" / f"{split}.jsonl") == jsonl(FIXTURES / "gsm8k" / f"{split}.jsonl")


@requires("commonsense_qa")
def test_commonsense_qa_names_splits_by_file_name(tmp_path: Path) -> None:
    folder = FIXTURES / "commonsense_qa"
    sources = [folder / "dev_rand_split.sample.jsonl", folder / "train_rand_split.sample.jsonl"]
    manifest = prepare_dataset("commonsense_qa", sources, tmp_path / "csqa")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("train.jsonl", 30), ("dev.jsonl", 24)]
    # the loader keeps only derived values in Example.source; the stored rows are written back whole
    assert jsonl(tmp_path / "csqa" / "dev.jsonl") == jsonl(sources[0])
    assert ids("commonsense_qa", tmp_path / "csqa" / "train.jsonl") == ids("commonsense_qa", sources[1])


@requires("anli")
def test_anli_keeps_rounds_and_splits(tmp_path: Path) -> None:
    source = FIXTURES / "anli" / "anli_v1.0"
    out = tmp_path / "anli"
    manifest = prepare_dataset("anli", [source], out)
    outputs = [(o["path"], o["rows"]) for o in manifest["outputs"]]
    assert outputs == [("R1/dev.jsonl", 20), ("R1/test.jsonl", 10), ("R2/dev.jsonl", 20)]
    for name, _ in outputs:
        # the stored rows, without the "round" the loader adds to Example.source, which it reads from R<n>/ again
        assert jsonl(out / name) == jsonl(source / name)
        loaded = [(e.id, e.source["round"]) for e in get_task("anli").load(out / name)]
        assert loaded == [(e.id, e.source["round"]) for e in get_task("anli").load(source / name)]
    # a second run into the same folder replaces the files inside the round folders
    (out / "R1" / "dev.jsonl").write_text("stale\n")
    prepare_dataset("anli", [source], out)
    assert jsonl(out / "R1" / "dev.jsonl") == jsonl(source / "R1" / "dev.jsonl")


@requires("hi_tom")
def test_hi_tom_is_evaluation_only_and_keeps_the_original_document(tmp_path: Path) -> None:
    source = FIXTURES / "hi_tom" / "Hi-ToM_data_sample.json"
    manifest = prepare_dataset("hi_tom", [source], tmp_path / "hi_tom")
    assert [(o["path"], o["rows"]) for o in manifest["outputs"]] == [("test.json", 10)]
    assert (tmp_path / "hi_tom" / "test.json").read_bytes() == source.read_bytes()


@requires("gpqa")
def test_gpqa_is_evaluation_only_csv_with_the_source_header(tmp_path: Path) -> None:
    source = FIXTURES / "gpqa" / "gpqa_synthetic.csv"
    prepare_dataset("gpqa", [source], tmp_path / "gpqa")
    written = tmp_path / "gpqa" / "test.csv"
    with open(source, encoding="utf-8-sig", newline="") as a, open(written, encoding="utf-8", newline="") as b:
        original, copied = csv.DictReader(a), csv.DictReader(b)
        assert list(copied) == list(original) and copied.fieldnames == original.fieldnames
    assert ids("gpqa", written) == ids("gpqa", source)


@requires("explore_tom")
def test_explore_tom_splits_in_paper_proportions(tmp_path: Path) -> None:
    source = _explore_tom_rows(tmp_path / "ExploreToM-data-sample.csv", copies=134)
    manifest = prepare_dataset("explore_tom", [source], tmp_path / "a", seed=0)
    outputs = [(o["path"], o["rows"]) for o in manifest["outputs"]]
    assert outputs == [("train.csv", 104), ("val.csv", 15), ("test.csv", 15)]
    parts = [ids("explore_tom", tmp_path / "a" / name) for name in ("train.csv", "val.csv", "test.csv")]
    assert sorted(i for part in parts for i in part) == sorted(ids("explore_tom", source))
    prepare_dataset("explore_tom", [source], tmp_path / "b", seed=0)
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    with open(source, newline="") as handle:
        header = next(csv.reader(handle))
    with open(tmp_path / "a" / "val.csv", newline="") as handle:
        assert next(csv.reader(handle)) == header


def _explore_tom_rows(path: Path, copies: int) -> Path:
    """``copies`` distinct rows made from the repository's synthetic ExploreToM CSV (no real data exists here)."""
    with open(FIXTURES / "explore_tom" / "synthetic_sample.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        template, header = list(reader), reader.fieldnames
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for number in range(copies):
            row = dict(template[number % len(template)])
            row["question"] = f"{row['question']} (variant {number})"
            writer.writerow(row)
    return path


def test_a_json_split_that_does_not_parse_names_its_file_and_line(tmp_path: Path) -> None:
    from coral.data.files import read_rows
    from coral.errors import DataError

    split = tmp_path / "split.json"
    split.write_text('{"data": [\n  {"story": "x"},\n  oops\n]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"split\.json.*line 3.*not valid JSON"):
        read_rows(split)
    split.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match="nested too deeply"):
        read_rows(split)
