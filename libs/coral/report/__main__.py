"""``coral-report <results dir> [<results dir> ...] [-o report.html]``: the HTML report of one run or a comparison."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coral.report.build import REPORT_FILE, write_report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, write the report and its figures, and say where they are."""
    parser = argparse.ArgumentParser(
        prog="coral-report",
        description="Write a self-contained HTML report of results folders (several: compared with the first).",
    )
    parser.add_argument("results_dirs", nargs="+", type=Path, help="folders holding conversations*.jsonl")
    parser.add_argument(
        "-o", "--output", type=Path, help=f"the HTML file (default: <first results dir>/{REPORT_FILE}); "
        "figures/*.png are written beside it"
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(args.results_dirs, args.output)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    print(f"wrote {report.html} and {len(report.figures)} figures in {report.html.parent / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
