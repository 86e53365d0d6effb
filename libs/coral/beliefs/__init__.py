"""Belief extraction: the answer each turn commits to, by the task's rules or an LLM judge."""

from coral.beliefs.extractor import EXTRACTION_MODES, BeliefExtractor, Extraction

__all__ = ["EXTRACTION_MODES", "BeliefExtractor", "Extraction"]
