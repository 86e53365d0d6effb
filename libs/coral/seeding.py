"""Seeds derived from what a request is, not from when it runs, so reruns and resumes reproduce it."""

from __future__ import annotations

import hashlib

_SEP = "\x1f"


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and the request's coordinates (example id, sample, turn, branch, ...)."""
    return SeedPrefix(run_seed, *parts).derive()


class SeedPrefix:
    """``derive_seed`` with its leading parts fixed and hashed once, for the many seeds of one conversation.

    ``SeedPrefix(run_seed, *parts).derive(*more) == derive_seed(run_seed, *parts, *more)``: the hash of the
    common prefix is copied instead of recomputed, and the rest is fed to the copy.
    """

    def __init__(self, run_seed: int, *parts: object) -> None:
        self._hash = hashlib.sha256(_SEP.join(map(str, (run_seed, *parts))).encode())

    def derive(self, *more: object) -> int:
        """``derive_seed(run_seed, *parts, *more)``."""
        digest = self._hash.copy()
        if more:
            digest.update((_SEP + _SEP.join(map(str, more))).encode())
        return int.from_bytes(digest.digest()[:8], "big") >> 1
