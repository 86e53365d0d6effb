"""What every benchmark shares: repeated measurements, targets, result sections, machine facts and the report.

A benchmark module measures one thing with explicit sizes (``measure``) and turns repeated measurements into a
``Section``: a table of medians with their spread (min-max over the repeats), notes saying exactly what was
counted, and ``Check``s against the issue's targets. ``benchmarks.run`` prints the sections and renders them into
``benchmarks/RESULTS.md`` together with the machine they ran on.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (benchmarks read bundled data from ``data/`` and configs from ``configs/``)."""


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Stat:
    """One quantity measured once per repeat; reported as the median and the min-max spread."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Stat needs at least one value")

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def format(self, digits: int = 1) -> str:
        """``median (min-max)``, or just the value when there was one repeat or every repeat agreed."""
        median = f"{self.median:,.{digits}f}"
        if len(self.values) == 1 or self.low == self.high:
            return median
        return f"{median} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def stat(results: Sequence[T], value: Callable[[T], float]) -> Stat:
    """The Stat of ``value(result)`` over repeated results."""
    return Stat(tuple(float(value(r)) for r in results))


def repeat(times: int, measure: Callable[[int], T]) -> list[T]:
    """``measure(i)`` for i in 0..times-1; the index lets a repeat vary its seed."""
    if times < 1:
        raise ValueError(f"repeats must be >= 1, got {times}")
    return [measure(i) for i in range(times)]


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...``; ``elapsed()`` is the seconds since entering (frozen on exit)."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


# ---------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Row:
    """One line of a section's table: what was measured, its value over the repeats, and the unit."""

    metric: str
    value: Stat | str
    unit: str = ""
    digits: int = 1

    def cell(self) -> str:
        return self.value if isinstance(self.value, str) else self.value.format(self.digits)


@dataclass(frozen=True)
class Check:
    """A target from the issue: ``value`` (the median) compared with ``target`` by ``op`` (">=" or "<=")."""

    name: str
    value: float
    op: str
    target: float

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"Check.op must be '>=' or '<=', got {self.op!r}")

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.op == ">=" else self.value <= self.target

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def describe(self) -> str:
        return f"{self.name}: {_number(self.value)} (target {self.op} {_number(self.target)})"

    def line(self) -> str:
        return f"{self.verdict}  {self.describe()}"


def _number(value: float) -> str:
    """Three significant digits, without exponents for large values (8,816 rather than 8.82e+03)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass
class Section:
    """One benchmark's report: a table, notes on what was counted, and target checks."""

    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        """A plain-text table for the terminal."""
        width = max([len(r.metric) for r in self.rows] + [6])
        lines = [f"== {self.title} ({self.seconds:.0f} s)"]
        lines += [f"  {r.metric:<{width}}  {r.cell()} {r.unit}".rstrip() for r in self.rows]
        lines += [f"  {check.line()}" for check in self.checks]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"## {self.title}"]
        if self.rows:
            lines += ["", "| metric | median (min-max) | unit |", "|---|---|---|"]
            lines += [f"| {r.metric} | {r.cell()} | {r.unit} |" for r in self.rows]
        if self.checks:
            lines += ["", *(f"- **{c.verdict}** {c.describe()}" for c in self.checks)]
        if self.notes:
            lines += ["", *(f"- {note}" for note in self.notes)]
        lines.append(f"- wall time: {self.seconds:.0f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- machine facts
def machine() -> dict[str, str]:
    """CPU model, cores, memory, OS, versions and the git commit, for the report's header."""
    facts = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": _memory(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for package in ("torch", "transformers", "ray", "aiohttp", "openai"):
        facts[package] = _version(package)
    facts["commit"] = git_commit(ROOT)
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit(root: Path) -> str:
    """The checked-out commit, read from ``.git`` directly (no git process); "unknown" outside a checkout."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------------------------------------- the report
def report(sections: Sequence[Section], mode: str, total_seconds: float, facts: dict[str, str]) -> str:
    """RESULTS.md: header (machine, date, versions, commit), every target with PASS/MISS, then each section."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# coral benchmarks",
        "",
        (
            f"Written by `python -m benchmarks.run{' --quick' if mode == 'quick' else ''}` on {now}, in "
            f"{total_seconds:.0f} s ({mode} sizes). Values are the median over repeats with the min-max spread in "
            "parentheses."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in facts.items()),
        "",
        "## Targets",
        "",
    ]
    checks = [check for section in sections for check in section.checks]
    lines += [f"- **{check.verdict}** {check.describe()}" for check in checks] or [
        "- (no targets in the benchmarks that ran)"
    ]
    for section in sections:
        lines += ["", section.markdown()]
    return "\n".join(lines) + "\n"
