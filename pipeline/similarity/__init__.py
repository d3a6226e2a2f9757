"""Nearest neighbours and near-duplicate groups of the stored embeddings; spill files at scale."""

from pipeline.similarity.find import FindSimilar, SimilaritySettings

__all__ = ["FindSimilar", "SimilaritySettings"]
