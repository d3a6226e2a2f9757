"""The pipeline's own flags: declared by feature group (flags), read and checked beside
Beam's (parsing), and written out as metadata.json and docs/options.md (describe)."""

from pipeline.options.flags import LEASE_STALE_AFTER_HOURS, parse_bool
from pipeline.options.parsing import (
    EmbeddingOptions,
    UsageError,
    build_parser,
    kept_columns,
    parse_options,
)

__all__ = [
    "LEASE_STALE_AFTER_HOURS",
    "EmbeddingOptions",
    "UsageError",
    "build_parser",
    "kept_columns",
    "parse_bool",
    "parse_options",
]
