"""Seeds derived from what a request is, not from when it runs, so reruns and resumes reproduce it."""

from __future__ import annotations

import hashlib


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and the request's coordinates (example id, sample, turn, branch, ...)."""
    text = "\x1f".join(str(p) for p in (run_seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
