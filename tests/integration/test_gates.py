"""The lint and type gates: CI (the README's command 2) runs ruff and mypy before the tests, and each fails on a
new violation under the committed configuration (ruff.toml, setup.cfg [mypy]).

The probes are written to a temporary folder shaped like the repository, so the tree itself is never touched.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = "import sys\nimport os\n\n\ndef untyped(x):\n    return os.sep + sys.argv[0] + x\n"
"""Unsorted imports and an undocumented, unannotated public function."""


def readme_test_command() -> list[str]:
    """README command 2 as ``.ci/run`` reads it (the line after ``# 2.``), split into its ``&&`` steps."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("# 2. "))
    return [step.strip() for step in lines[index + 1].split("&&")]


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *map(str, command)], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=120)


def test_ci_runs_ruff_and_mypy_after_installing_and_before_the_tests():
    steps = readme_test_command()
    installed = max(i for i, step in enumerate(steps) if step.startswith("pip install"))
    assert installed < steps.index("ruff check .") < steps.index("mypy") < len(steps) - 1
    assert steps[-1].startswith("python -m pytest")


def test_the_gates_are_pinned_at_the_installed_versions():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    assert pins["ruff"] == importlib.metadata.version("ruff")
    assert pins["mypy"] == importlib.metadata.version("mypy")


def test_ruff_fails_on_a_new_violation_with_docstring_checks_for_the_library_only(tmp_path):
    for path in ("libs/coral/probe.py", "tests/probe.py"):
        (tmp_path / path).parent.mkdir(parents=True)
        (tmp_path / path).write_text(PROBE, encoding="utf-8")
    result = run("ruff", "check", "--no-cache", "--config", ROOT / "ruff.toml", "--output-format", "concise",
                 "libs", "tests", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    found = {(line.split(":")[0], line.split()[1]) for line in result.stdout.splitlines() if ".py:" in line}
    assert found == {
        ("libs/coral/probe.py", "D100"), ("libs/coral/probe.py", "I001"), ("libs/coral/probe.py", "D103"),
        ("tests/probe.py", "I001"),
    }


def test_mypy_fails_on_untyped_or_wrong_library_code(tmp_path):
    (tmp_path / "coral").mkdir()
    (tmp_path / "coral" / "probe.py").write_text(PROBE + '\n\ndef wrong() -> int:\n    return "text"\n')
    (tmp_path / "script.py").write_text(PROBE)  # outside coral.*: untyped definitions are allowed
    result = run("mypy", "--config-file", ROOT / "setup.cfg", "--cache-dir", os.devnull, "coral/probe.py", "script.py",
                 cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2 and all(line.startswith("coral/probe.py:") for line in errors)
    assert "[no-untyped-def]" in errors[0] and "[return-value]" in errors[1]
