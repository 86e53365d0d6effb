"""Data preparation: the paper's splits, rebuilt from each dataset's original files.

The Coral reference evaluated on splits it never published and ships no script that makes them, so its MATH,
MMLU-Pro and ExploreToM numbers cannot be traced to data. ``python -m coral.data prepare <task> --source ...
--out data/<task>`` validates every source row with the task's own loader, applies the task's split rule and
writes the splits in the source's own row format beside a ``manifest.json`` that pins sources and outputs by
SHA-256. ``prepare_dataset`` is the library call behind the command line.
"""

from __future__ import annotations

from coral.data.prepare import MANIFEST, PREPARE_VERSION, PREPARERS, PrepareError, prepare_dataset

__all__ = ["MANIFEST", "PREPARERS", "PREPARE_VERSION", "PrepareError", "prepare_dataset"]
