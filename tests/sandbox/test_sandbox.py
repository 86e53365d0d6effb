"""The sandbox runs real hostile code: loops, fork bombs, huge allocations, escapes, network calls, exits.

Every test runs a real child process. Timeouts are 2 s so the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coral import sandbox
from coral.sandbox import SandboxLimits, check_solution, run_python, run_python_async

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

ROOT = Path(__file__).resolve().parents[2]
FAST = {"timeout_s": 2, "cpu_s": 2}
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def mbpp_11() -> dict:
    with open(ROOT / "data" / "mbpp" / "mbpp.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return next(r for r in rows if r["task_id"] == 11)


def test_a_correct_mbpp_solution_passes(mbpp_11: dict) -> None:
    assert "\r\n" in mbpp_11["code"]
    result = check_solution(mbpp_11["code"], mbpp_11["test_list"], mbpp_11["test_setup_code"], **FAST)
    assert result.status == "passed", result.stderr
    assert result.passed and result.returncode == 0 and result.duration_s < 2


def test_a_wrong_solution_fails_on_its_assert(mbpp_11: dict) -> None:
    wrong = "def remove_Occ(s, ch):\n    return s\n"
    result = check_solution(wrong, mbpp_11["test_list"], **FAST)
    assert result.status == "failed"
    assert result.returncode == 1 and "AssertionError" in result.stderr


def test_exceptions_and_syntax_errors_fail() -> None:
    assert run_python("def f(:\n    pass\n", **FAST).status == "failed"
    assert run_python("undefined_name\n", **FAST).status == "failed"


def test_an_infinite_loop_times_out() -> None:
    result = run_python("while True:\n    pass\n", **FAST)
    assert result.status == "timeout"
    assert result.duration_s < 6


def test_the_cpu_limit_also_counts_as_timeout() -> None:
    result = run_python("while True:\n    pass\n", timeout_s=10, cpu_s=1)
    assert result.status == "timeout" and result.duration_s < 6


def _live_processes_of(uid: int) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "uid=,stat=,pid="], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines()
            if int(line.split()[0]) == uid and not line.split()[1].startswith("Z")]


@pytest.mark.skipif(not IS_ROOT, reason="a fresh uid per run needs root")
def test_a_fork_bomb_is_contained_and_every_process_of_the_run_is_gone() -> None:
    bomb = (
        "import os, sys, time\n"
        "print(os.getuid(), flush=True)\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # leave the process group: only the sweep by uid can find these
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    result = run_python(bomb, **FAST)
    assert result.status == "timeout"
    uid = int(result.stdout.split()[0])
    assert uid not in (0, os.getuid())
    assert _live_processes_of(uid) == []
    assert run_python("print('still fine')", **FAST).stdout == "still fine\n"


def test_a_plain_fork_bomb_never_passes() -> None:
    result = run_python("import os\nwhile True:\n    os.fork()\n", **FAST)
    assert result.status in ("failed", "timeout")


def test_allocating_10_gb_is_a_memory_error() -> None:
    result = run_python("data = bytearray(10 * 2**30)\n", **FAST)
    assert result.status == "memory"
    assert "MemoryError" in result.stderr


def test_flooding_stdout_is_cut_off_and_the_tail_stays_small() -> None:
    result = run_python("while True:\n    print('x' * 10000)\n", timeout_s=5, cpu_s=5, max_file_mb=1)
    assert result.status == "crashed"  # Python ignores SIGXFSZ: the write fails, then the exit
    assert "File too large" in result.stderr and len(result.stdout) <= 4096


@pytest.mark.skipif(not IS_ROOT, reason="a read-only file system and a dropped uid need root")
def test_writes_outside_the_work_folder_fail_and_leave_nothing() -> None:
    targets = [Path(f"/tmp/coral_escape_{secrets.token_hex(6)}"), ROOT / f"coral_escape_{secrets.token_hex(6)}"]
    code = "import os\n" + "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    print('wrote', {str(t)!r})\n"
        f"except OSError as exc:\n    print('blocked', exc.errno)\n"
        for t in targets
    ) + "open('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read(), os.getcwd())\n"
    result = run_python(code, **FAST)
    assert result.status == "passed", result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["blocked", "blocked"]
    for target in targets:
        assert not target.exists()
    inside, work = lines[2].split()
    assert inside == "ok"
    assert not Path(work).exists()  # the throwaway folder is deleted afterwards


def test_the_work_folder_is_fresh_and_deleted() -> None:
    first = run_python("import os\nprint(os.getcwd(), sorted(os.listdir('.')))\n", **FAST)
    second = run_python("import os\nprint(os.getcwd())\n", **FAST)
    folder, listing = first.stdout.split(" ", 1)
    assert listing.strip() == "['main.py']"
    assert folder != second.stdout.strip()
    assert not Path(folder).exists() and not Path(folder).parent.exists()


def test_a_network_connection_is_blocked_and_the_server_sees_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        result = run_python(code, **FAST)
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.status == "failed"
    assert "OSError" in result.stderr or "PermissionError" in result.stderr


def test_the_socket_prelude_blocks_sockets_where_no_namespace_can_be_made(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", sandbox._SOCKET_PRELUDE], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 1
    assert "network access is disabled in the coral sandbox" in run.stderr


@pytest.mark.parametrize(
    ("code", "returncode"),
    [("import os\nos._exit(3)\n", 3), ("import sys\nsys.exit(2)\n", 2), ("import sys\nsys.exit('bye')\n", 1)],
)
def test_exits_are_reported_not_raised(code: str, returncode: int) -> None:
    result = run_python(code, **FAST)
    assert (result.status, result.returncode) == ("crashed", returncode)


def test_exiting_zero_before_the_asserts_is_not_a_pass(mbpp_11: dict) -> None:
    assert run_python("import sys\nsys.exit(0)\n", **FAST).status == "passed"  # plain runs: exit 0 is success
    result = check_solution("import sys\nsys.exit(0)\n", mbpp_11["test_list"], **FAST)
    assert result.status == "crashed" and "before the tests finished" in result.stderr
    result = check_solution("import os\nos._exit(0)\n", mbpp_11["test_list"], **FAST)
    assert result.status == "crashed"


def test_isolation_applied_here() -> None:
    result = run_python("pass", **FAST)
    assert {"rlimits", "session"} <= set(result.isolation)
    assert "netns" in result.isolation or "socket_prelude" in result.isolation
    if IS_ROOT:
        assert {"netns", "readonly_fs", "uid"} <= set(result.isolation)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="SandboxLimits.memory_mb"):
        SandboxLimits(memory_mb=0)


@pytest.mark.asyncio
async def test_the_async_variant_never_blocks_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    results = await asyncio.gather(
        run_python_async("while True:\n    pass\n", **FAST),
        run_python_async("print(6 * 7)\n", **FAST),
    )
    task.cancel()
    assert [r.status for r in results] == ["timeout", "passed"]
    assert results[1].stdout == "42\n"
    assert ticks >= 20  # the loop kept running through the 2 s timeout
