"""search-images: the images of an output nearest to a text or an image, embedded as the
output's own run embedded its images; over the Parquet shards, or BigQuery's
VECTOR_SEARCH on the table a run loaded."""

from pipeline import logs

# Before TensorFlow and gRPC are imported: their start-up chatter would hide the one line
# a refused search prints.
logs.quiet_environment(verbose=False)

from pipeline.search.query import embed_image, embed_text  # noqa: E402
from pipeline.search.recorded import Recorded, SearchError, read_recorded  # noqa: E402
from pipeline.search.scan import Match, search_parquet  # noqa: E402

__all__ = [
    "Match",
    "Recorded",
    "SearchError",
    "embed_image",
    "embed_text",
    "read_recorded",
    "search_parquet",
]
