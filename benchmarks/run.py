"""coral's performance harness: runs the benchmarks, prints their tables and writes ``benchmarks/RESULTS.md``.

    python -m benchmarks.run [--quick] [--only NAME[,NAME...]] [--repeats N] [--output PATH]
                             [--vllm-url http://host:8000/v1 --vllm-model NAME]

Benchmarks (``--only`` names): ``orchestration`` (1), ``engine`` (2), ``http`` (3), ``prefix`` (4),
``extraction`` (5), ``report`` (6); see each module's docstring for what exactly is counted. ``--quick`` uses small
sizes and one or two repeats (under 5 minutes on a quiet 2-core machine); the default sizes take 40-60 minutes there.
Ratios taken within one run are what to compare across machines; absolute rates depend on the machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import (
    engine_efficiency,
    extraction_cost,
    http_clients,
    orchestration,
    prefix_reuse,
    report_load,
)
from benchmarks.common import Check, Row, Section, machine, report, stopwatch

QUICK_LIMIT_S = 300.0
"""The issue's budget for ``--quick``."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark module (its ``QUICK`` / ``FULL`` sizes and ``benchmark(sizes, repeats, **options)``)."""

    module: ModuleType
    quick_repeats: int
    full_repeats: int
    options: dict[str, Any] = field(default_factory=dict)

    def run(self, quick: bool, repeats: int | None) -> Section:
        sizes = self.module.QUICK if quick else self.module.FULL
        count = repeats or (self.quick_repeats if quick else self.full_repeats)
        return self.module.benchmark(sizes, count, **self.options)


def benchmarks(vllm: prefix_reuse.VLLMTarget | None) -> dict[str, Benchmark]:
    """Every benchmark by its ``--only`` name, in the issue's order (which is the order they run in)."""
    return {
        "orchestration": Benchmark(orchestration, quick_repeats=2, full_repeats=5),
        "engine": Benchmark(engine_efficiency, quick_repeats=1, full_repeats=3),
        "http": Benchmark(http_clients, quick_repeats=1, full_repeats=3),
        "prefix": Benchmark(prefix_reuse, quick_repeats=1, full_repeats=3, options={"vllm": vllm}),
        "extraction": Benchmark(extraction_cost, quick_repeats=1, full_repeats=3),
        "report": Benchmark(report_load, quick_repeats=1, full_repeats=3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one or two repeats")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only these (repeatable, or comma-separated)"
    )
    parser.add_argument("--repeats", type=int, help="repeats of every measurement (default: 1-2 quick, 3-5 full)")
    parser.add_argument(
        "--output", type=Path, default=Path(__file__).with_name("RESULTS.md"), help="the report to write"
    )
    parser.add_argument("--vllm-url", help="a vLLM server's API root (e.g. http://host:8000/v1) for benchmark 4")
    parser.add_argument("--vllm-model", help="the model name that vLLM server serves")
    args = parser.parse_args(argv)
    if bool(args.vllm_url) != bool(args.vllm_model):
        parser.error("--vllm-url and --vllm-model go together")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    known = list(benchmarks(None))
    args.only = [name.strip() for value in args.only for name in value.split(",") if name.strip()]
    unknown = [name for name in args.only if name not in known]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(known)}")
    return args


def run_one(name: str, bench: Benchmark, quick: bool, repeats: int | None) -> tuple[Section, bool]:
    """The benchmark's section, or a section holding its error (a failure never stops the other benchmarks)."""
    try:
        return bench.run(quick, repeats), True
    except Exception as exc:
        traceback.print_exc()
        return Section(name, f"{name}: FAILED", [Row("error", f"{type(exc).__name__}: {exc}")]), False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    vllm = prefix_reuse.VLLMTarget(args.vllm_url, args.vllm_model) if args.vllm_url else None
    chosen = {name: bench for name, bench in benchmarks(vllm).items() if not args.only or name in args.only}
    facts = machine()
    sections, ok = [], True
    with stopwatch() as elapsed:
        for name, bench in chosen.items():
            print(f"-- running {name} ...", flush=True)
            section, passed = run_one(name, bench, args.quick, args.repeats)
            ok &= passed
            sections.append(section)
            print(section.table(), flush=True)
    if args.quick and not args.only:
        budget = Check("--quick wall time, all benchmarks (s)", elapsed(), "<=", QUICK_LIMIT_S)
        sections.append(Section("harness", "Harness", checks=[budget], seconds=elapsed()))
    args.output.write_text(report(sections, "quick" if args.quick else "full", elapsed(), facts))
    print(f"\nall benchmarks: {elapsed():.0f} s; report written to {args.output}")
    for check in (check for section in sections for check in section.checks):
        print(check.line())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
