"""Synthesis: datasets from model outputs.

MBPP-CR (mbpp_cr_builder), DPO pairs from tree records (preferences), SFT examples (sft), and their TRL /
fairseq2 files (formats).
"""
