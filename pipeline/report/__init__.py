"""The map: a PCA projection to 2-D, the PNG scatter and the self-contained HTML report."""

from pipeline.report.mapping import THUMBNAIL_SIZE, MapEmbeddings

__all__ = ["THUMBNAIL_SIZE", "MapEmbeddings"]
