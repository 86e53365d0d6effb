"""Synthesis: building datasets from model outputs (MBPP-CR today; SFT / DPO data from conversation records next)."""
