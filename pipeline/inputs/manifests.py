"""Parquet manifests: image URIs in a column of Parquet files, as LAION, DataComp and COYO
publish them. sources.py decides what an --input is and refuses what it cannot read;
this module reads Parquet."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from pipeline.common import FAILED, Failure, counter

PARQUET = ".parquet"
# Rows turned into Python values at once: a row group can hold a million rows.
_CHUNK_ROWS = 65_536
_SHOWN_CHARACTERS = 200


@dataclass(frozen=True)
class ManifestLayout:
    """The Parquet files to read (a glob), the column of URIs and the kept columns."""

    pattern: str
    uri_column: str
    kept: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """The columns read; no other column's pages are fetched."""
        return list(dict.fromkeys((self.uri_column, *self.kept)))


def is_folder(path: str) -> bool:
    """A path ending in a slash, or a local directory."""
    local = FileSystems.get_scheme(path) is None
    return path.endswith("/") or (local and os.path.isdir(path))


def manifest_pattern(path: str) -> str | None:
    """The glob of the Parquet files that path names, or None if it names no manifest: a
    path or glob ending in .parquet is one, and so is a folder (its .parquet files)."""
    if path.lower().endswith(PARQUET):
        return path
    if is_folder(path):
        return f"{path.rstrip('/')}/*{PARQUET}"
    return None


def is_manifest(path: str) -> bool:
    return manifest_pattern(path) is not None


def manifest_files(pattern: str) -> list[str]:
    """The files pattern matches, sorted: the order manifest_uris reads them in."""
    matched = FileSystems.match([pattern])[0].metadata_list
    return sorted(metadata.path for metadata in matched)


def read_schema(path: str) -> pa.Schema:
    with FileSystems.open(path) as handle:
        return pq.ParquetFile(handle).schema_arrow


def _value_type(field_type: pa.DataType) -> pa.DataType:
    return field_type.value_type if pa.types.is_dictionary(field_type) else field_type


def holds_strings(field_type: pa.DataType) -> bool:
    """Whether a column's values are text (a URI column must be)."""
    value_type = _value_type(field_type)
    return pa.types.is_string(value_type) or pa.types.is_large_string(value_type)


def keepable(field_type: pa.DataType) -> bool:
    """Whether a column's values have a string form (kept_strings): text, numbers,
    booleans, dates, times and null. Bytes, lists, structs and maps have none."""
    value_type = _value_type(field_type)
    return holds_strings(value_type) or any(
        check(value_type)
        for check in (
            pa.types.is_integer,
            pa.types.is_floating,
            pa.types.is_boolean,
            pa.types.is_decimal,
            pa.types.is_temporal,
            pa.types.is_null,
        )
    )


def kept_strings(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """A kept column's values as strings: Arrow's cast to string (3, 0.1, 1 for 1.0,
    true, 2024-01-31, 2024-01-31 12:00:00), a null as the empty string."""
    return pc.fill_null(pc.cast(column, pa.string()), "").to_pylist()


def count_manifest_rows(pattern: str, limit: int) -> int | None:
    """The rows the files hold (their footers say), or None once over limit."""
    rows = 0
    for path in manifest_files(pattern):
        with FileSystems.open(path) as handle:
            rows += pq.ParquetFile(handle).metadata.num_rows
        if rows > limit:
            return None
    return rows


def manifest_uris(layout: ManifestLayout) -> Iterator[str]:
    """The URIs in file order (files sorted, rows in order), as ManifestRowsFn takes them,
    stripped and without empty ones; reads the URI column only, only as far as taken."""
    for path in manifest_files(layout.pattern):
        for uri in _column_values(path, layout.uri_column):
            if uri and uri.strip():
                yield uri.strip()


def _column_values(path: str, column: str) -> Iterator[str | None]:
    with FileSystems.open(path) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(_CHUNK_ROWS, columns=[column]):
            yield from pc.cast(batch.column(0), pa.string()).to_pylist()


class ManifestRowsFn(beam.DoFn):
    """A row group of a manifest (a pyarrow Table) to (uri, kept values) rows; a row whose
    URI is null or empty is a read failure. Every row counts as read."""

    def __init__(self, layout: ManifestLayout):
        self._uri = layout.uri_column
        self._kept = layout.kept
        self._rows = counter("rows_read")

    def process(self, table: pa.Table):
        self._check_columns(table)
        self._rows.inc(table.num_rows)
        for start in range(0, table.num_rows, _CHUNK_ROWS):
            yield from self._rows_of(table.slice(start, _CHUNK_ROWS))

    def _rows_of(self, table: pa.Table):
        uris = pc.cast(table.column(self._uri), pa.string()).to_pylist()
        kept = [kept_strings(table.column(name)) for name in self._kept]
        for index, uri in enumerate(uris):
            values = tuple(column[index] for column in kept)
            if uri and uri.strip():
                yield uri.strip(), values
            else:
                yield pvalue.TaggedOutput(FAILED, self._missing(uri, values))

    def _check_columns(self, table: pa.Table) -> None:
        # The launch checked the first file's schema; pyarrow reads a column that another
        # file lacks as no column at all, which no row could survive.
        missing = [name for name in (self._uri, *self._kept) if name not in table.column_names]
        if missing:
            raise ValueError(
                f"a file of the Parquet manifest has no column {', '.join(missing)}; every "
                "file needs the URI column and the kept columns"
            )

    def _missing(self, uri: str | None, values: tuple[str, ...]) -> Failure:
        # The row as JSON stands in for its URI, as a CSV row's line does.
        row = {self._uri: uri, **dict(zip(self._kept, values, strict=True))}
        shown = json.dumps(row, ensure_ascii=False)
        if len(shown) > _SHOWN_CHARACTERS:
            shown = f"{shown[:_SHOWN_CHARACTERS]}..."
        what = "null" if uri is None else "empty"
        return Failure(shown, "read", "MissingUri", f"no URI in column {self._uri} ({what})")


class ReadManifestRows(beam.PTransform):
    """The manifest's (uri, kept values) rows and its read failures (FAILED), read with
    Beam's Parquet source: a row group at a time, split over workers, only the layout's
    columns."""

    def __init__(self, layout: ManifestLayout):
        super().__init__()
        self._layout = layout

    def expand(self, pbegin):
        tables = pbegin | "Read Parquet" >> beam.io.ReadFromParquetBatched(
            self._layout.pattern, columns=self._layout.columns
        )
        return tables | "Rows of each row group" >> beam.ParDo(
            ManifestRowsFn(self._layout)
        ).with_outputs(FAILED, main="rows")
