"""Synthesis: datasets from model outputs.

MBPP-CR (mbpp_cr_builder), DPO pairs from Coral's tree records (preferences), SFT examples (sft), MALT's per-role
SFT examples and sibling pairs from generate-verify-refine trees (malt), and their TRL / fairseq2 files (formats).
"""
