"""Run untrusted Python (model-written solutions) in a throwaway, resource-limited, offline child process.

MBPP-CR labels a sampled solution by running it against the task's asserts, so coral executes code no one has
read. Each run is layered so that one bad sample (a loop, a fork bomb, a 10 GB allocation, ``os._exit``, a write
outside its folder, a network call) yields a status and never harms the caller or the machine::

    caller --Popen, new session--> supervisor (this file run as a script, ``python -I -S``)
                                      --fork--> child: resource limits; when root: new network namespace (no
                                                interfaces but a downed loopback), new mount namespace with every
                                                mount read-only except the run's work folder, then a fresh unused
                                                uid/gid (so RLIMIT_NPROC counts this run alone and its processes
                                                can be found by uid); then exec ``python -I -S main.py``.

The supervisor enforces the wall-clock limit, kills the child's process group and then every process of the run's
uid (also those that escaped the group with ``setsid``), and reaps orphans as their subreaper. Doing this in a
separate single-threaded process keeps ``preexec_fn`` (unsafe with threads) out of the caller, so
``run_python_async`` can run many sandboxes from worker threads. ``SandboxResult.isolation`` names the layers
that applied; without root the network is blocked by a ``socket`` prelude instead (best effort, documented), and
the file system is protected only by the caller's own permissions.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["passed", "failed", "timeout", "memory", "crashed", "error"]
"""passed: exit 0 (and, for tests, every assert ran); failed: an uncaught exception such as AssertionError or
SyntaxError; timeout: wall-clock or CPU limit; memory: MemoryError; crashed: killed by a signal, a bare non-zero
exit (``os._exit(3)``, ``sys.exit("x")``) or an exit before the tests finished; error: the sandbox itself failed."""

_UIDS = (1_500_000_000, 2_000_000_000)
"""Fresh uids are drawn from here: unused by any system, so a run's processes are exactly those of its uid."""
_NOBODY = 65534
_TAIL_BYTES = 4096
_EXEC_FAILED = 125
_MIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

# Network blocked at the Python level, for when no network namespace can be made: best effort only (ctypes or a
# subprocess can still reach the network), which is why ``isolation`` reports "socket_prelude" instead of "netns".
_SOCKET_PRELUDE = """\
import socket as _socket_module, _socket
class _NoSocket(_socket_module.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError(1, "network access is disabled in the coral sandbox")
_socket_module.socket = _socket.socket = _NoSocket
del _socket_module, _socket, _NoSocket
__file__ = "main.py"
with open("main.py", "rb") as _source:
    exec(compile(_source.read(), "main.py", "exec"))
"""


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use.

    Args:
        timeout_s: wall-clock seconds before the whole run is killed.
        cpu_s: CPU seconds per process (RLIMIT_CPU).
        memory_mb: address space per process (RLIMIT_AS); Python itself needs ~30 MB.
        max_processes: processes of the run's uid (RLIMIT_NPROC), the fork-bomb ceiling.
        max_file_mb: largest file a process may write (RLIMIT_FSIZE), stdout and stderr included.
        max_open_files: file descriptors per process (RLIMIT_NOFILE).
    """

    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16
    max_open_files: int = 64

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {value}")


@dataclass(frozen=True)
class SandboxResult:
    """How a run ended; ``stdout``/``stderr`` are the last few KB, ``isolation`` the layers that applied."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    isolation: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Exit 0 (and, for tests, every assert ran)."""
        return self.status == "passed"


def run_python(
    code: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: int = 10,
    memory_mb: int = 512,
    max_processes: int = 16,
    max_file_mb: int = 16,
    max_open_files: int = 64,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox and report how it ended; never raises for the code's sake."""
    limits = SandboxLimits(timeout_s, cpu_s, memory_mb, max_processes, max_file_mb, max_open_files)
    interpreter, uid_mode = _runtime()
    return _run(code, limits, interpreter, uid_mode)


def solution_program(code: str, test_list: list[str], setup_code: str = "", marker: str | None = None) -> str:
    """Setup, solution and asserts as one program; ``marker`` is printed only if every assert ran."""
    parts = [setup_code, code, "\n".join(test_list)]
    if marker is not None:
        parts.append(f"print({marker!r})")
    return "\n\n".join(p.replace("\r\n", "\n") for p in parts if p) + "\n"


def check_solution(code: str, test_list: list[str], setup_code: str = "", **limits: Any) -> SandboxResult:
    """Run a solution against its asserts. An exit 0 before the last assert (``sys.exit(0)``) is not a pass."""
    marker = f"coral-sandbox-tests-finished-{secrets.token_hex(8)}"
    result = run_python(solution_program(code, test_list, setup_code, marker), **limits)
    if result.status == "passed" and not result.stdout.rstrip().endswith(marker):
        return SandboxResult("crashed", result.returncode, result.stdout, result.stderr + "\n[exited before the tests "
                             "finished]", result.duration_s, result.isolation)
    return result


async def run_python_async(code: str, **limits: Any) -> SandboxResult:
    """``run_python`` in a worker thread, so the event loop keeps serving while the sandbox runs."""
    import asyncio  # here, not at the top: the supervisor runs this file and should start fast

    return await asyncio.to_thread(run_python, code, **limits)


async def check_solution_async(code: str, test_list: list[str], setup_code: str = "", **limits: Any) -> SandboxResult:
    """``check_solution`` in a worker thread."""
    import asyncio

    return await asyncio.to_thread(check_solution, code, test_list, setup_code, **limits)


def describe_isolation() -> dict[str, Any]:
    """What a run gets on this machine (interpreter, uid mode, layers), from one trivial run."""
    interpreter, uid_mode = _runtime()
    result = _run("pass", SandboxLimits(timeout_s=30), interpreter, uid_mode)
    return {"interpreter": interpreter, "uid_mode": uid_mode, "status": result.status, "isolation": result.isolation}


# --- caller side ---------------------------------------------------------------------------------------------------


_RUNTIME_LOCK = threading.Lock()


def _runtime() -> tuple[str, str]:
    """``_probe_runtime`` once, however many threads start sandboxes at the same time."""
    with _RUNTIME_LOCK:
        return _probe_runtime()


@functools.cache
def _probe_runtime() -> tuple[str, str]:
    """The interpreter and uid mode to use, found once by trying them (as root, the uid must be able to run it).

    A fresh uid per run is best; some containers map only uids < 65536, so "nobody" (shared with other runs, no
    sweep by uid) comes next; without root, or when neither works, the caller's own uid.
    """
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return sys.executable, "none"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", "/usr/bin/python3"]
    for interpreter in dict.fromkeys(os.path.realpath(c) for c in candidates if os.path.exists(c)):
        for uid_mode in ("unique", "nobody"):
            if _run("import sys", SandboxLimits(timeout_s=30), interpreter, uid_mode).passed:
                return interpreter, uid_mode
    return sys.executable, "none"


def _run(code: str, limits: SandboxLimits, interpreter: str, uid_mode: str) -> SandboxResult:
    start = time.monotonic()
    uid = {"unique": secrets.randbelow(_UIDS[1] - _UIDS[0]) + _UIDS[0], "nobody": _NOBODY}.get(uid_mode)
    outer = os.path.realpath(tempfile.mkdtemp(prefix="coral-sandbox-"))
    work = os.path.join(outer, "work")
    read_end, write_end = os.pipe()
    try:
        os.mkdir(work, 0o700)
        with open(os.path.join(work, "main.py"), "w", encoding="utf-8") as handle:
            handle.write(code)
        if uid is not None:
            os.chmod(outer, 0o711)  # the uid may pass through, not list
            os.chown(work, uid, uid)
        plan = {
            "work": work,
            "argv": [interpreter, "-I", "-S", "main.py"],
            "argv_prelude": [interpreter, "-I", "-S", "-c", _SOCKET_PRELUDE],
            "env": dict(_MIN_ENV, HOME=work),
            "uid": uid,
            "sweep": uid_mode == "unique",
            "limits": asdict(limits),
            "info_fd": write_end,
        }
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            supervisor = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(plan)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=(write_end,), start_new_session=True,
                env=dict(_MIN_ENV), cwd=outer,
            )
            os.close(write_end)
            write_end = -1
            try:
                supervisor.wait(limits.timeout_s + 30)
            except subprocess.TimeoutExpired:  # backstop: the supervisor itself hung
                _kill_group(supervisor.pid)
                supervisor.wait()
                if plan["sweep"] and uid is not None:
                    _sweep(uid)
            info = _read_info(read_end)
            return _classify(info, supervisor.returncode, _tail(out), _tail(err), time.monotonic() - start, limits)
    except OSError as exc:
        return SandboxResult("error", None, "", f"sandbox: {exc}", time.monotonic() - start)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(outer, ignore_errors=True)


def _read_info(fd: int) -> dict[str, Any]:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    info: dict[str, Any] = {}
    for line in data.splitlines():
        try:
            info.update(json.loads(line))
        except json.JSONDecodeError:
            pass
    return info


def _tail(handle: Any) -> str:
    handle.seek(0, os.SEEK_END)
    handle.seek(max(0, handle.tell() - _TAIL_BYTES))
    return handle.read().decode("utf-8", "replace")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b", re.MULTILINE)


def _classify(info: dict[str, Any], supervisor_rc: int | None, stdout: str, stderr: str, duration: float,
              limits: SandboxLimits) -> SandboxResult:
    isolation = tuple(info.get("isolation", ()))

    def result(status: Status, returncode: int | None) -> SandboxResult:
        return SandboxResult(status, returncode, stdout, stderr, round(duration, 3), isolation)

    if "error" in info or "wait_status" not in info:
        problem = info.get("error", f"supervisor exited with {supervisor_rc} and no report")
        stderr = (stderr + f"\n[sandbox error: {problem}]").lstrip("\n")
        return result("error", None)
    wait_status = info["wait_status"]
    returncode = os.waitstatus_to_exitcode(wait_status)
    cpu_exceeded = info.get("cpu_s", 0.0) >= limits.cpu_s
    if info.get("timed_out") or returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu_exceeded):
        return result("timeout", returncode)
    if returncode != 0 and "MemoryError" in stderr[-1000:]:
        return result("memory", returncode)
    if returncode == 0:
        return result("passed", 0)
    if returncode == 1 and ("Traceback (most recent call last)" in stderr or _EXCEPTION_LINE.search(stderr)):
        return result("failed", 1)
    return result("crashed", returncode)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _live_pids(uid: int) -> list[int]:
    """Processes (not zombies) whose real or effective uid is ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="utf-8") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        uids = fields.get("Uid", "").split()
        if fields.get("State", "").strip().startswith("Z") or len(uids) < 2:
            continue
        if int(uids[0]) == uid or int(uids[1]) == uid:
            pids.append(int(name))
    return pids


def _sweep(uid: int, rounds: int = 200) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork bomb is capped by RLIMIT_NPROC, so this ends)."""
    for _ in range(rounds):
        pids = _live_pids(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


# --- supervisor side (this file run as a script, as the caller's user) -----------------------------------------------

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 32, 4096, 16384, 1 << 18
_MOUNT_OPTIONS = {"nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
                  "strictatime": 1 << 24}
_PR_SET_CHILD_SUBREAPER = 36


def _libc_call(name: str, *args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _readonly_fs(work: str) -> None:
    """In a fresh mount namespace, leave ``work`` the only writable mount (bind it first: binds inherit ro)."""
    _libc_call("unshare", _CLONE_NEWNS)
    _libc_call("mount", None, b"/", None, _MS_REC | _MS_PRIVATE, None)
    _libc_call("mount", work.encode(), work.encode(), None, _MS_BIND, None)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = [line.split()[4:6] for line in handle]
    for point, options in mounts:
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
        if point == work:
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
        flags |= sum(_MOUNT_OPTIONS.get(option, 0) for option in options.split(","))
        _libc_call("mount", None, point.encode(), None, flags, None)


def _set_limits(limits: dict[str, Any]) -> None:
    import resource

    mb = 1 << 20
    for kind, soft, hard in (
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1),
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mb, limits["max_file_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["max_open_files"], limits["max_open_files"]),
    ):
        resource.setrlimit(kind, (soft, hard))


def _child(plan: dict[str, Any]) -> None:
    """Set up isolation and exec the program; any failure is reported as a sandbox error, never run unisolated."""
    info_fd = plan["info_fd"]
    try:
        os.setpgid(0, 0)
        isolation = ["rlimits", "session"]
        root = os.geteuid() == 0
        try:
            _libc_call("unshare", _CLONE_NEWNET if root else _CLONE_NEWUSER | _CLONE_NEWNET)
            isolation.append("netns")
        except OSError:
            isolation.append("socket_prelude")
        if root:
            try:
                _readonly_fs(plan["work"])
                isolation.append("readonly_fs")
            except OSError:
                pass
        _set_limits(plan["limits"])
        uid = plan["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            isolation.append("uid")
        os.chdir(plan["work"])
        argv = plan["argv"] if "netns" in isolation else plan["argv_prelude"]
        os.write(info_fd, json.dumps({"isolation": isolation}).encode() + b"\n")
        os.close(info_fd)
        os.execve(argv[0], argv, plan["env"])
    except BaseException as exc:  # report and leave; the program never runs
        try:
            os.write(info_fd, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        finally:
            os._exit(_EXEC_FAILED)


def _wait(pid: int, timeout_s: float) -> tuple[int, float, bool]:
    """(wait status, CPU seconds, timed out) of ``pid``, killing its process group after ``timeout_s``."""
    import select

    timed_out = False
    try:
        with os.fdopen(os.pidfd_open(pid), "rb", buffering=0) as pidfd:
            timed_out = not select.select([pidfd], [], [], timeout_s)[0]
    except OSError:  # no pidfd (old kernel): poll
        deadline = time.monotonic() + timeout_s
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.01)
    if timed_out:
        _kill_group(pid)
    _, status, usage = os.wait4(pid, 0)
    return status, usage.ru_utime + usage.ru_stime, timed_out


def _reap(seconds: float = 2.0) -> None:
    """Collect orphans adopted as subreaper, so no zombie of this run outlives it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)


def _supervise(plan: dict[str, Any]) -> None:
    if plan["sweep"]:
        _libc_call("prctl", _PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        _child(plan)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it already, or is gone
    status, cpu_s, timed_out = _wait(pid, plan["limits"]["timeout_s"])
    _kill_group(pid)  # what it left running in its group
    if plan["sweep"]:
        _sweep(plan["uid"])
        _reap()
    report = {"wait_status": status, "cpu_s": round(cpu_s, 3), "timed_out": timed_out}
    os.write(plan["info_fd"], json.dumps(report).encode() + b"\n")


if __name__ == "__main__":
    _supervise(json.loads(sys.argv[1]))
