"""The pipeline's own flags: declared by feature group (flags), read and checked beside
Beam's (parsing), refused in one line with a suggestion (suggest), and written out as
metadata.json and docs/options.md (describe)."""

from pipeline.options.flags import LEASE_STALE_AFTER_HOURS, parse_bool
from pipeline.options.parsing import (
    EmbeddingOptions,
    UsageError,
    allowed_networks,
    build_parser,
    compare_threshold,
    kept_columns,
    parse_options,
    print_beam_help,
    print_help,
    score_heads,
)
from pipeline.options.suggest import OneLineParser

__all__ = [
    "LEASE_STALE_AFTER_HOURS",
    "EmbeddingOptions",
    "OneLineParser",
    "UsageError",
    "allowed_networks",
    "build_parser",
    "compare_threshold",
    "kept_columns",
    "parse_bool",
    "parse_options",
    "print_beam_help",
    "print_help",
    "score_heads",
]
