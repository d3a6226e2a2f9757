"""The embedding file formats, each described in one place: how embeddings are written,
which files hold them, and how later steps (--skip_existing, --map) read them back."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from contextlib import closing
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from pipeline.common import csv_line, csv_records, read_json, replacing
from pipeline.outputs.columns import DROP_REASON, KEEP, KEEP_COLUMNS, KEEP_TYPES, RowColumns
from pipeline.outputs.kinds import FileKind
from pipeline.outputs.naming import (
    EMBEDDINGS,
    LEGACY_EMBEDDINGS,
    NPY_DIRECTORY,
    NPY_INDEX,
    NPY_METADATA,
    SUMMARY,
    output_path,
    run_of_shard,
)
from pipeline.outputs.provenance import Provenance
from pipeline.outputs.rows import (
    ReadNpyRowFn,
    index_rows,
    load_npy,
    parquet_columns,
    parquet_stored_row,
)
from pipeline.outputs.sinks import (
    NPY_INDEX_COLUMNS,
    PARQUET_COLUMNS,
    WriteNpy,
    WriteParquet,
    parquet_schema,
)
from pipeline.outputs.target import RunTarget


class StoredBatch(NamedTuple):
    """Stored embeddings read back: their URIs, the (n, d) matrix and (n, 2) width, height."""

    uris: list[str]
    embeddings: np.ndarray
    sizes: np.ndarray


class EmbeddingFormat(abc.ABC):
    """What the pipeline needs to know of a format; one subclass per --output_format."""

    columns: tuple[str, ...] = ()  # the format's own columns, which kept ones may not reuse
    file_kinds: tuple[FileKind, ...] = ()  # its record files, which --skip_existing keeps

    @abc.abstractmethod
    def store(
        self,
        target: RunTarget,
        provenance: Provenance,
        num_shards: int,
        columns: RowColumns,
    ) -> beam.PTransform:
        """(ImageKey, embedding) to stored files in the run's folder, with the extra
        columns; outputs embedded (int), failed, files (the staged record files' names)
        and stored (the (ImageKey, embedding)s they hold)."""

    @abc.abstractmethod
    def embedding_files(self, output: str) -> str:
        """A glob of the files that hold the embeddings (what the summary names)."""

    @abc.abstractmethod
    def record_files(self, output: str) -> list[str]:
        """Globs of the files that list every URI embedded under output."""

    @abc.abstractmethod
    def column_names(self, record_file: str) -> list[str]:
        """The columns one record file holds, kept ones included."""

    @abc.abstractmethod
    def recorded(self, output: str, run_id: str, record_file: str) -> dict[str, Any]:
        """What the files say of how one run made what record_file holds, as far as they
        record it (Provenance.differences reads it)."""

    @abc.abstractmethod
    def read_uris(self) -> beam.PTransform:
        """Names of record files to the URIs they list."""

    @abc.abstractmethod
    def read_batches(self, output: str) -> beam.PTransform:
        """Names of stored files (the store's `files`, or record_files) to StoredBatches."""

    @abc.abstractmethod
    def read_rows(self, output: str, columns: RowColumns) -> beam.PTransform:
        """Names of record files to a StoredRow (rows.py) per row, with columns."""

    @abc.abstractmethod
    def uris_in(self, record_file: str) -> Iterator[str]:
        """The URIs one record file lists, read as a stream."""

    @abc.abstractmethod
    def write_decisions(
        self, record_file: str, destination: str, dropped: Mapping[str, str]
    ) -> int:
        """record_file as destination (which may be record_file itself) with keep and
        drop_reason decided: dropped maps the URIs not kept to why; every other row is
        kept. Columns it lacks are added, before model and run_id. Returns the rows."""


def _uri_of_row(row: dict) -> str:
    return row["uri"]


def _first_field(record: list[str]) -> str:
    return record[0]


def _parquet_batch(table) -> StoredBatch:
    uris = table.column("uri").to_pylist()
    embeddings = table.column("embedding").combine_chunks()
    size = embeddings.type.list_size
    matrix = embeddings.flatten().to_numpy(zero_copy_only=False).reshape(len(uris), size)
    sizes = np.stack(
        [table.column(name).to_numpy(zero_copy_only=False) for name in ("width", "height")],
        axis=1,
    )
    return StoredBatch(uris, matrix, sizes)


class ParquetFormat(EmbeddingFormat):
    """Sharded Parquet in the embeddings/ folder: uri, embedding (fixed-size list of
    float32), width, height, datapoint_id, the extra columns (RowColumns: labels, scores,
    kept columns), model, run_id."""

    columns = PARQUET_COLUMNS
    file_kinds = (
        FileKind(EMBEDDINGS, ".parquet", kept_by_increments=True),
        FileKind(LEGACY_EMBEDDINGS, ".parquet", kept_by_increments=True),
    )

    def store(self, target, provenance, num_shards, columns):
        schema = parquet_schema(provenance.embedding_shape, provenance.shard_metadata(), columns)
        stage = target.record_stage(columns.curated)
        return WriteParquet(stage, target.run_id, schema, num_shards, columns)

    def embedding_files(self, output):
        return output_path(output, f"{EMBEDDINGS}-*.parquet")

    def record_files(self, output):
        # Shards an earlier version left beside the other outputs still count.
        return [self.embedding_files(output), self.legacy_files(output)]

    def legacy_files(self, output: str) -> str:
        """A glob of the shards in the earlier layout, beside the other outputs."""
        return output_path(output, f"{LEGACY_EMBEDDINGS}-*.parquet")

    def column_names(self, record_file):
        with FileSystems.open(record_file) as handle:
            return pq.read_schema(handle).names

    def recorded(self, output, run_id, record_file):
        with FileSystems.open(record_file) as handle:
            metadata = pq.read_schema(handle).metadata or {}
        return {key.decode(): value.decode() for key, value in metadata.items()}

    def read_uris(self):
        return beam.io.ReadAllFromParquet(columns=["uri"]) | "URI column" >> beam.Map(_uri_of_row)

    def read_batches(self, output):
        return beam.io.ReadAllFromParquetBatched(
            columns=["uri", "embedding", "width", "height"]
        ) | "To matrices" >> beam.Map(_parquet_batch)

    def read_rows(self, output, columns):
        return beam.io.ReadAllFromParquet(columns=parquet_columns(columns)) | "Rows" >> beam.Map(
            parquet_stored_row, columns
        )

    def uris_in(self, record_file):
        with FileSystems.open(record_file) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(_REWRITE_ROWS, columns=["uri"]):
                yield from batch.column("uri").to_pylist()

    def write_decisions(self, record_file, destination, dropped):
        rows = 0
        with FileSystems.open(record_file) as source:
            shard = pq.ParquetFile(source)
            schema = _with_decision_fields(shard.schema_arrow)
            with (
                replacing(destination) as sink,
                pq.ParquetWriter(sink, schema, compression="snappy") as writer,
            ):
                for batch in shard.iter_batches(_REWRITE_ROWS):
                    writer.write_batch(_decided(batch, schema, dropped))
                    rows += batch.num_rows
        return rows


# Rows a rewrite holds at once: 32 MB of 2048-float embeddings, and one row group each.
_REWRITE_ROWS = 4096


def _with_decision_fields(schema: pa.Schema) -> pa.Schema:
    """schema with keep and drop_reason, added before model and run_id if it lacks them."""
    if set(KEEP_COLUMNS) <= set(schema.names):
        return schema
    position = next(
        (index for index, name in enumerate(schema.names) if name in ("model", "run_id")),
        len(schema.names),
    )
    for offset, (name, kind) in enumerate(zip(KEEP_COLUMNS, KEEP_TYPES, strict=True)):
        schema = schema.insert(position + offset, pa.field(name, kind))
    return schema


def _decided(batch: pa.RecordBatch, schema: pa.Schema, dropped: Mapping[str, str]):
    """The batch's rows in schema's columns, keep and drop_reason decided."""
    reasons = [dropped.get(uri) for uri in batch.column("uri").to_pylist()]
    decided = {
        KEEP: pa.array([reason is None for reason in reasons], pa.bool_()),
        DROP_REASON: pa.array(reasons, pa.string()),
    }
    columns = [decided[name] if name in decided else batch.column(name) for name in schema.names]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class ReadNpyFn(beam.DoFn):
    """An index record (uri, file, width, height, ...) to a StoredBatch of that one
    embedding."""

    def __init__(self, directory: str):
        self._directory = directory

    def process(self, record: list[str]):
        uri, name, width, height = record[:4]
        embedding = load_npy(self._directory, name)
        yield StoredBatch([uri], embedding.reshape(1, -1), np.array([[int(width), int(height)]]))


class NpyFormat(EmbeddingFormat):
    """One .npy per image in its run's folder embeddings/RUN/, and an index CSV: uri, file
    (relative to embeddings/), width, height, datapoint_id, the label columns (--zero_shot_labels)
    and the kept columns."""

    columns = NPY_INDEX_COLUMNS
    file_kinds = (FileKind(NPY_INDEX, ".csv", kept_by_increments=True),)

    def store(self, target, provenance, num_shards, columns):
        stage = target.record_stage(columns.curated)
        return WriteNpy(target.output, stage, target.run_id, num_shards, columns)

    def embedding_files(self, output):
        return output_path(output, f"{NPY_DIRECTORY}/*/*.npy")

    def record_files(self, output):
        return [output_path(output, f"{NPY_INDEX}-*.csv")]

    def column_names(self, record_file):
        with closing(csv_records(record_file)) as records:
            return next(records, [])

    def recorded(self, output, run_id, record_file):
        # Runs of earlier versions wrote no metadata file; their summary.json said the same.
        for path in (
            output_path(output, f"{NPY_DIRECTORY}/{run_id}/{NPY_METADATA}"),
            output_path(output, SUMMARY),
        ):
            recorded = read_json(path)
            if recorded is not None:
                return recorded
        return {}

    def read_uris(self):
        records = "Index records" >> beam.FlatMap(csv_records, skip_header=True)
        return records | "URI field" >> beam.Map(_first_field)

    def read_batches(self, output):
        return (
            "Index records" >> beam.FlatMap(csv_records, skip_header=True)
            # One worker reads each index file; the .npy reads are spread over all.
            | "Spread records" >> beam.Reshuffle()
            | "Read .npy" >> beam.ParDo(ReadNpyFn(output_path(output, NPY_DIRECTORY)))
        )

    def read_rows(self, output, columns):
        return (
            "Index rows" >> beam.FlatMap(index_rows, columns)
            # As read_batches: the .npy reads are spread over the workers.
            | "Spread rows" >> beam.Reshuffle()
            | "Read .npy rows" >> beam.ParDo(ReadNpyRowFn(output, columns))
        )

    def uris_in(self, record_file):
        for record in csv_records(record_file, skip_header=True):
            yield record[0]

    def write_decisions(self, record_file, destination, dropped):
        rows = 0
        with closing(csv_records(record_file)) as records, replacing(destination) as sink:
            header = next(records, [])
            added = [name for name in KEEP_COLUMNS if name not in header]
            keep, reason = (*header, *added).index(KEEP), (*header, *added).index(DROP_REASON)
            sink.write((csv_line([*header, *added]) + "\n").encode("utf-8"))
            for record in records:
                fields = [*record, *("" for _ in added)]
                why = dropped.get(record[0])
                fields[keep], fields[reason] = ("false", why) if why else ("true", "")
                sink.write((csv_line(fields) + "\n").encode("utf-8"))
                rows += 1
        return rows


FORMATS: dict[str, EmbeddingFormat] = {"parquet": ParquetFormat(), "npy": NpyFormat()}


class ReadEmbeddedUris(beam.PTransform):
    """URIs already embedded under the output: the record of work the earlier runs that
    summary.json names did (target.earlier_runs); other runs' files there are not read."""

    def __init__(self, target: RunTarget):
        super().__init__()
        self._output = target.output
        self._format = FORMATS[target.output_format]
        self._runs = frozenset(target.earlier_runs)

    def expand(self, pbegin):
        runs = self._runs
        return (
            pbegin
            | "Record file patterns" >> beam.Create(self._format.record_files(self._output))
            | "Match earlier outputs"
            >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Current runs' files" >> beam.Filter(lambda path: run_of_shard(path) in runs)
            | "Read URIs" >> self._format.read_uris()
        )
