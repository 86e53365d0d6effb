"""Build an SFT dataset (TRL and fairseq2) from results: turns of correct agreements, correct turns, or all turns.

Example::

    python finetuning/data_creation/build_sft.py --results results/a --out data/sft \\
        --model SmolLM2-135M-Instruct --mode agreement --seed 0

What each mode selects, and where that differs from the reference code: ``coral.synthesis.sft``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coral.backends.models import DEFAULT_MODEL
from coral.synthesis.formats import sft_files
from coral.synthesis.sft import SFTSettings, select_sft
from finetuning.data_creation import build_dataset, cli_parser, parse_settings


def build_sft(results: Sequence[str | Path], out: str | Path, settings: SFTSettings | None = None,
              model: Any = DEFAULT_MODEL) -> dict[str, Any]:
    """Write the SFT dataset of ``results`` to ``out`` and return its counts.

    ``settings`` None means ``SFTSettings()``; ``model`` is a model name, a checkpoint folder or a tokenizer object.
    """
    return build_dataset("sft", results, out, settings or SFTSettings(), model, select_sft, sft_files)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = cli_parser("build_sft.py", __doc__.split("\n")[0], SFTSettings)
    args, settings = parse_settings(parser, SFTSettings, argv)
    counts = build_sft(args.results, args.out, settings, args.model)
    print(json.dumps({"out": args.out, "examples": counts["examples"], "records_read": counts["records_read"],
                      "dropped": counts["dropped"]}))
    return counts


if __name__ == "__main__":
    main()
