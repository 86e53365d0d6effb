"""Reproducible performance measurements (ratios taken in one run; never timed assertions in tests)."""
