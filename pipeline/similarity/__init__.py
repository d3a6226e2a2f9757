"""Nearest neighbours and near-duplicate groups of the stored embeddings, matches in another
output; spill files at scale."""

from pipeline.similarity.compare import CompareSettings, CompareWith
from pipeline.similarity.find import FindSimilar, SimilaritySettings

__all__ = ["CompareSettings", "CompareWith", "FindSimilar", "SimilaritySettings"]
