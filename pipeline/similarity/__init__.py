"""Nearest neighbours and near-duplicate groups of the stored embeddings, matches in another
output, what to keep; spill files at scale."""

from pipeline.similarity.compare import CompareSettings, CompareWith
from pipeline.similarity.find import FindSimilar, SimilaritySettings
from pipeline.similarity.keep import KeepDecisions

__all__ = ["CompareSettings", "CompareWith", "FindSimilar", "KeepDecisions", "SimilaritySettings"]
