"""What every stage shares: the records passed between steps, counters and the local run's
progress, CSV lines, atomic writes, seeded samples."""

from pipeline.common import progress
from pipeline.common.atomic import read_json, replacing, write_atomically, write_json
from pipeline.common.csvlines import csv_fields, csv_line, csv_records, unwritable
from pipeline.common.metrics import NAMESPACE, counter
from pipeline.common.paths import UnsafeNameError, path_inside, plain_parts
from pipeline.common.records import FAILED, STAGES, Failure, ImageKey, Labels
from pipeline.common.sampling import seeded_rank

__all__ = [
    "FAILED",
    "NAMESPACE",
    "STAGES",
    "Failure",
    "ImageKey",
    "Labels",
    "UnsafeNameError",
    "counter",
    "csv_fields",
    "csv_line",
    "csv_records",
    "path_inside",
    "plain_parts",
    "progress",
    "read_json",
    "replacing",
    "seeded_rank",
    "unwritable",
    "write_atomically",
    "write_json",
]
