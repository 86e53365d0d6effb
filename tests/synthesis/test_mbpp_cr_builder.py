"""The MBPP-CR builder with scripted replies and the real sandbox: labels, hostile samples, resume, seeds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from coral.backends import BackendError, ScriptedBackend
from coral.errors import DataError
from coral.sampling import SamplingParams
from coral.sandbox import SandboxLimits
from coral.seeding import derive_seed
from coral.synthesis.mbpp_cr_builder import (
    BuildCounts,
    build_mbpp_cr,
    extract_code,
    main,
    read_mbpp,
    solution_messages,
    split_rows,
)
from coral.tasks.mbpp_cr import MBPPCRTask

ROOT = Path(__file__).resolve().parents[2]
MBPP = ROOT / "data" / "mbpp" / "mbpp.jsonl"
LIMITS = SandboxLimits(timeout_s=2, cpu_s=2)
SEED = 7


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    test = split_rows(read_mbpp(MBPP), "test")
    return [r for r in test if r["task_id"] in (11, 42)]


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\nIt should work."


def behaviours(row: dict) -> list[str]:
    """Replies for samples 0..5: correct, wrong, an endless loop, a bare exit, a fork bomb, a 10 GB allocation."""
    name = row["test_list"][0].split("assert ")[1].split("(")[0]
    return [
        fenced(row["code"]),
        fenced(f"def {name}(*args):\n    return None"),
        fenced("while True:\n    pass"),
        "import os; os._exit(1)",
        fenced("import os\nwhile True:\n    os.fork()"),
        fenced("data = bytearray(10 * 2**30)"),
    ]


def scripted(rows: list[dict], seed: int = SEED, count: int = 6) -> ScriptedBackend:
    """Answers by the request's seed, which names (task, sample): so any completion order gives the same rows."""
    by_seed = {derive_seed(seed, r["task_id"], i): behaviours(r)[i] for r in rows for i in range(count)}
    return ScriptedBackend(lambda messages, sampling: by_seed[sampling.seed])


def read_rows(path: Path) -> dict[str, dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len({r["id"] for r in rows}) == len(rows), "duplicate ids"
    return {r["id"]: r for r in rows}


def build(rows: list[dict], backend: ScriptedBackend, out: Path, samples: int, seed: int = SEED) -> BuildCounts:
    return asyncio.run(build_mbpp_cr(rows, backend, "scripted", samples_per_task=samples, out_path=out, seed=seed,
                                     limits=LIMITS))


def test_hostile_samples_are_labelled_and_the_build_survives(rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "mbpp_cr" / "test.jsonl"
    counts = build(rows, scripted(rows), out, samples=6)
    assert counts == BuildCounts(tasks=2, samples=12, written=12, skipped=0, correct=2, errors=0)
    written = read_rows(out)
    for row in rows:
        got = [written[f"{row['task_id']}-{i}"] for i in range(6)]
        assert [g["is_correct"] for g in got] == [True, False, False, False, False, False]
        statuses = [g["sandbox_status"] for g in got]
        assert statuses[:4] == ["passed", "failed", "timeout", "crashed"]
        assert statuses[4] in ("failed", "timeout") and statuses[5] == "memory"
        first = got[0]
        assert list(first) == ["id", "task_id", "sample_index", "text", "code", "test_list", "test_setup_code",
                               "is_correct", "sandbox_status", "seed", "model"]
        assert (first["task_id"], first["text"], first["test_list"]) == (row["task_id"], row["text"], row["test_list"])
        assert first["code"] == row["code"]  # the fenced block, not the prose around it
        assert got[3]["code"] == "import os; os._exit(1)"  # no fence: the whole reply
    # The output is what the task reads.
    assert len(list(MBPPCRTask().load(out))) == 12


def test_prompt_shows_the_task_and_one_assert(rows: list[dict]) -> None:
    [message] = solution_messages(rows[0])
    assert message["role"] == "user"
    assert rows[0]["text"] in message["content"]
    assert rows[0]["test_list"][0] in message["content"] and rows[0]["test_list"][1] not in message["content"]


def test_resume_skips_done_ids_and_never_duplicates(rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "test.jsonl"
    assert build(rows, scripted(rows, count=2), out, samples=2).written == 4
    again = scripted(rows, count=2)
    assert build(rows, again, out, samples=2) == BuildCounts(2, 4, 0, 4, 0, 0)
    assert again.calls == []
    # A crash mid-write leaves a cut-off last line and some samples missing: both are repaired on resume.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])
    resumed = scripted(rows, count=2)
    counts = build(rows, resumed, out, samples=2)
    assert (counts.written, counts.skipped) == (2, 2) and len(resumed.calls) == 2
    assert sorted(read_rows(out)) == ["11-0", "11-1", "42-0", "42-1"]


def test_seeds_are_derived_and_builds_reproduce(rows: list[dict], tmp_path: Path) -> None:
    first, second = scripted(rows, count=2), scripted(rows, count=2)
    build(rows, first, tmp_path / "a.jsonl", samples=2)
    build(rows, second, tmp_path / "b.jsonl", samples=2)
    a, b = read_rows(tmp_path / "a.jsonl"), read_rows(tmp_path / "b.jsonl")
    assert a == b
    for row in rows:
        for i in range(2):
            assert a[f"{row['task_id']}-{i}"]["seed"] == derive_seed(SEED, row["task_id"], i)
    assert sorted(c.sampling.seed for c in first.calls) == sorted(r["seed"] for r in a.values())
    assert len({r["seed"] for r in a.values()}) == 4
    other = {derive_seed(SEED + 1, r["task_id"], i) for r in rows for i in range(2)}
    assert other.isdisjoint(r["seed"] for r in a.values())


def test_a_failed_request_is_not_written_and_is_retried(rows: list[dict], tmp_path: Path) -> None:
    out = tmp_path / "test.jsonl"
    flaky_seed = derive_seed(SEED, 42, 1)
    good = scripted(rows, count=2)
    flaky = ScriptedBackend(lambda m, s: BackendError("overloaded") if s.seed == flaky_seed else good.script(m, s))
    assert build(rows, flaky, out, samples=2) == BuildCounts(2, 4, 3, 0, 2, 1)
    assert build(rows, scripted(rows, count=2), out, samples=2) == BuildCounts(2, 4, 1, 3, 0, 0)
    assert sorted(read_rows(out)) == ["11-0", "11-1", "42-0", "42-1"]


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("```python\nx = 1\n```", "x = 1"),
        ("Sure!\n```py\nx = 1\ny = 2\n```\nand a usage:\n```python\nprint(x)\n```", "x = 1\ny = 2"),
        ("```\nx = 1\n```", "x = 1"),
        ("```Python\r\nx = 1\r\n```", "x = 1"),
        ("```python\ndef f():\n    return 1", "def f():\n    return 1"),  # cut off by max_tokens
        ("def f():\n    return 1\n", "def f():\n    return 1"),
    ],
)
def test_extract_code(reply: str, code: str) -> None:
    assert extract_code(reply) == code


def test_splits_by_task_id() -> None:
    rows = read_mbpp(MBPP)
    sizes = {split: len(split_rows(rows, split)) for split in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 80, "validation": 5, "train": 5}
    assert all(601 <= r["task_id"] <= 974 for r in split_rows(rows, "train"))
    with pytest.raises(ValueError, match="unknown MBPP split"):
        split_rows(rows, "dev")


def test_malformed_mbpp_names_file_line_and_field(tmp_path: Path) -> None:
    good = MBPP.read_text(encoding="utf-8").splitlines()[0]
    bad = json.loads(good) | {"test_list": "assert f() == 1"}
    path = tmp_path / "mbpp.jsonl"
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"mbpp\.jsonl, line 2: field 'test_list'"):
        read_mbpp(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match=r"line 2: field 'task_id': duplicate"):
        read_mbpp(path)


def test_cli_builds_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompt_rows = split_rows(read_mbpp(MBPP), "prompt")[:2]
    by_seed = {derive_seed(0, r["task_id"], 0): fenced(r["code"]) for r in prompt_rows}
    backend = ScriptedBackend(lambda messages, sampling: by_seed[sampling.seed])
    out = tmp_path / "prompt.jsonl"
    argv = ["--mbpp", str(MBPP), "--split", "prompt", "--samples", "1", "--out", str(out), "--max-tasks", "2",
            "--model", "scripted", "--timeout-s", "5", "--temperature", "0.5"]
    counts = main(argv, backend=backend)
    assert counts == BuildCounts(2, 2, 2, 0, 2, 0)
    assert sorted(read_rows(out)) == ["1-0", "2-0"]
    assert json.loads(capsys.readouterr().out)["written"] == 2
    assert {c.sampling.temperature for c in backend.calls} == {0.5}
    assert all(isinstance(c.sampling, SamplingParams) and c.model == "scripted" for c in backend.calls)
