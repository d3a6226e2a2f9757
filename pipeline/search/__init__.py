"""search-images: the images of an output nearest to a text or an image, embedded as the
output's own run embedded its images; over the Parquet shards, or BigQuery's
VECTOR_SEARCH on the table a run loaded."""

import os

# Before TensorFlow is imported: its C++ start-up chatter would hide the one line a
# refused search prints.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.search.query import embed_image, embed_text
from pipeline.search.recorded import Recorded, SearchError, read_recorded
from pipeline.search.scan import Match, search_parquet

__all__ = [
    "Match",
    "Recorded",
    "SearchError",
    "embed_image",
    "embed_text",
    "read_recorded",
    "search_parquet",
]
