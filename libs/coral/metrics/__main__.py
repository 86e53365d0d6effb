"""``python -m coral.metrics <results dir> [--compat]``: recompute metrics.json from a results store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coral.metrics.aggregate import METRICS_FILE, summary_table, write_metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, write ``<results dir>/metrics.json`` and print the summary table."""
    parser = argparse.ArgumentParser(
        prog="python -m coral.metrics",
        description="Recompute metrics.json from the conversations*.jsonl files of a results folder.",
    )
    parser.add_argument("results_dir", type=Path, help="folder holding conversations*.jsonl")
    parser.add_argument(
        "--compat",
        action="store_true",
        help="use the reference implementation's metric definitions (for comparing with paper numbers)",
    )
    args = parser.parse_args(argv)
    try:
        metrics = write_metrics(args.results_dir, compat=args.compat)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print(summary_table(metrics))
    print(f"\nwrote {args.results_dir / METRICS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
