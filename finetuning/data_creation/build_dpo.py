"""Build a DPO dataset (TRL and fairseq2) from tree-sampled results: correct vs incorrect candidates per level.

Example (the paper's caps, appendix D.2)::

    python finetuning/data_creation/build_dpo.py --results results/a results/b --out data/dpo \\
        --model SmolLM2-135M-Instruct --max_pairs_per_level 2 --max_pairs_per_problem 20 --seed 0

How pairs are chosen, and where that differs from the paper and the reference code: ``coral.synthesis.preferences``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coral.backends.models import DEFAULT_MODEL
from coral.synthesis.formats import dpo_files
from coral.synthesis.preferences import PairSettings, build_pairs
from finetuning.data_creation import build_dataset, cli_parser, parse_settings


def build_dpo(results: Sequence[str | Path], out: str | Path, settings: PairSettings | None = None,
              model: Any = DEFAULT_MODEL) -> dict[str, Any]:
    """Write the DPO dataset of ``results`` to ``out`` and return its counts.

    ``settings`` None means ``PairSettings()``; ``model`` is a model name, a checkpoint folder or a tokenizer object.
    """
    return build_dataset("dpo", results, out, settings or PairSettings(), model, build_pairs, dpo_files)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = cli_parser("build_dpo.py", __doc__.split("\n")[0], PairSettings)
    args, settings = parse_settings(parser, PairSettings, argv)
    counts = build_dpo(args.results, args.out, settings, args.model)
    print(json.dumps({"out": args.out, "pairs": counts["pairs"], "records_read": counts["records_read"],
                      "dropped": counts["dropped"]}))
    if not counts["pairs"]:
        print(f"build_dpo: no pairs: {counts['no_pairs_because']}", file=sys.stderr)
    return counts


if __name__ == "__main__":
    main()
