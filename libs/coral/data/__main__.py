"""``python -m coral.data prepare <task> --source <files...> --out data/<task> [--seed 0]``.

A thin layer over :func:`coral.data.prepare_dataset`: bad input (unknown task, missing or malformed source) prints one
message naming the problem and exits with status 2, and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from coral.data.prepare import MANIFEST, PREPARERS, PrepareError, prepare_dataset
from coral.errors import DataError

PROG = "python -m coral.data"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, prepare the splits and print their row counts; 2 on bad input."""
    parser = argparse.ArgumentParser(prog=PROG, description="Prepare datasets for coral from their original files.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare_parser = commands.add_parser(
        "prepare",
        help="validate a dataset's original files and write the paper's splits with a manifest",
        description="Validate every source row with the task's loader, split by the task's rule, and write the "
        "splits (in the source's row format) and manifest.json into --out. Nothing is written on error.",
    )
    prepare_parser.add_argument("task", help=f"task name: {', '.join(sorted(PREPARERS))}")
    prepare_parser.add_argument(
        "--source", nargs="+", required=True, type=Path, metavar="PATH", help="the dataset's original file(s)"
    )
    prepare_parser.add_argument("--out", required=True, type=Path, help="output folder, e.g. data/<task>")
    prepare_parser.add_argument("--seed", type=int, default=0, help="shuffle seed for resplit tasks (default 0)")
    args = parser.parse_args(argv)

    try:
        manifest = prepare_dataset(args.task, args.source, args.out, seed=args.seed)
    except (PrepareError, DataError, OSError) as exc:
        print(f"{PROG} prepare: error: {exc}", file=sys.stderr)
        print(f"nothing was written to {args.out}", file=sys.stderr)
        return 2
    for source in manifest["sources"]:
        print(f"read {source['path']}: {source['rows']} rows, all valid")
    for note in manifest["notes"]:
        print(note)
    width = max(len(output["path"]) for output in manifest["outputs"])
    for output in manifest["outputs"]:
        print(f"  {output['path']:<{width}}  {output['rows']:>7} rows")
    print(f"wrote {args.out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
