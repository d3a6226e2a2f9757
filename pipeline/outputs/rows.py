"""Decided rows read back whole (the key as the store had it, the embedding, the drop
reason), for a destination written from decided record files (keep.py) rather than from
the embeddings held since the store. Their columns are those of RowColumns, which must
be curated."""

from __future__ import annotations

import io
import json
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.common import ImageKey, Labels, csv_records, path_inside
from pipeline.outputs.columns import DROP_REASON, LABEL_COLUMNS, RowColumns
from pipeline.outputs.naming import NPY_DIRECTORY, output_path


class StoredRow(NamedTuple):
    """One stored image: its key (no thumbnail), its embedding, and why it is not kept
    ("" when kept)."""

    key: ImageKey
    embedding: np.ndarray
    drop_reason: str


def _key(row: dict, columns: RowColumns) -> ImageKey:
    """The ImageKey of a row given by column name (the label lists as lists)."""
    labels = None
    if columns.labelled:
        label, score, top, top_scores = (row[name] for name in LABEL_COLUMNS)
        labels = Labels(label, float(score), tuple(top), tuple(map(float, top_scores)))
    return ImageKey(
        row["uri"],
        int(row["width"]),
        int(row["height"]),
        columns=tuple(row[name] for name in columns.kept),
        labels=labels,
        scores=tuple(float(row[name]) for name in columns.scores),
    )


def parquet_columns(columns: RowColumns) -> list[str]:
    """The Parquet columns a StoredRow needs."""
    return ["uri", "embedding", "width", "height", *columns.names]


def parquet_stored_row(row: dict, columns: RowColumns) -> StoredRow:
    """A Parquet row (ReadAllFromParquet's dict of parquet_columns) as a StoredRow."""
    embedding = np.asarray(row["embedding"], dtype=np.float32)
    return StoredRow(_key(row, columns), embedding, row[DROP_REASON] or "")


def load_npy(directory: str, name: str) -> np.ndarray:
    """The array an index names (relative to embeddings/, directory): the index is under
    --output, so its names may not leave the folder, and nothing is unpickled."""
    with FileSystems.open(path_inside(directory, name)) as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def index_rows(index_file: str, columns: RowColumns):
    """An .npy index file's lines as dicts by column name (the label lists parsed)."""
    records = csv_records(index_file)
    header = next(records, [])
    for record in records:
        row = dict(zip(header, record, strict=True))
        if columns.labelled:
            row["labels_top"] = json.loads(row["labels_top"])
            row["labels_top_scores"] = json.loads(row["labels_top_scores"])
        yield row


class ReadNpyRowFn(beam.DoFn):
    """An .npy index line (index_rows) to a StoredRow, its .npy read from the output."""

    def __init__(self, output: str, columns: RowColumns):
        self._directory = output_path(output, NPY_DIRECTORY)
        self._columns = columns

    def process(self, row: dict):
        embedding = load_npy(self._directory, row["file"])
        yield StoredRow(_key(row, self._columns), embedding, row[DROP_REASON])
