"""Where results go: Parquet or .npy embeddings, the dead letter, and the summary."""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from pipeline.metrics import counter
from pipeline.naming import npy_name
from pipeline.records import Failure, ImageKey

FAILED = "failed"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
EMBEDDINGS = "embeddings"
NPY_DIRECTORY = "embeddings"
NPY_INDEX = "embeddings-index"
FAILURES = "failures"
SUMMARY = "summary.json"


def output_path(output: str, name: str) -> str:
    return FileSystems.join(output, name)


def write_atomically(path: str, data: bytes) -> None:
    """Writes data so that path shows either the old file or the whole new one."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        # Object stores (gs://) publish an object only when its upload completes.
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    directory, name = posixpath.split(path)
    partial = posixpath.join(directory, f".{name}.{uuid.uuid4().hex}.partial")
    with FileSystems.create(partial) as handle:
        handle.write(data)
    FileSystems.rename([partial], [path])


class RemoveStaleShardsFn(beam.DoFn):
    """Deletes shards of an earlier run that this run's sink did not rewrite.

    A re-run may write fewer shards than the last one; without this, old shards would
    sit beside the new ones and duplicate their rows.
    """

    def __init__(self, prefix: str, suffix: str):
        self._prefix = prefix
        self._suffix = suffix

    def process(self, written: list[str]):
        pattern = re.compile(
            re.escape(self._prefix) + r"-\d{5}-of-\d{5}" + re.escape(self._suffix) + "$"
        )
        keep = set(written)
        matches = FileSystems.match([f"{self._prefix}-*-of-*{self._suffix}"])[0].metadata_list
        stale = [m.path for m in matches if pattern.match(m.path) and m.path not in keep]
        if stale:
            FileSystems.delete(stale)
        yield from stale


def _remove_stale(written, prefix: str, suffix: str, label: str):
    return (
        written
        | f"{label}: list written" >> beam.combiners.ToList()
        | label >> beam.ParDo(RemoveStaleShardsFn(prefix, suffix))
    )


def parquet_schema(shape: tuple[int, ...], metadata: dict[str, str]) -> pa.Schema:
    size = int(np.prod(shape))
    return pa.schema(
        [
            ("uri", pa.string()),
            ("embedding", pa.list_(pa.float32(), size)),
            ("width", pa.int32()),
            ("height", pa.int32()),
        ],
        metadata={**metadata, "embedding_shape": json.dumps(list(shape))},
    )


def _parquet_row(keyed: tuple[ImageKey, np.ndarray]) -> dict:
    key, embedding = keyed
    return {
        "uri": key.uri,
        "embedding": embedding.reshape(-1),
        "width": key.width,
        "height": key.height,
    }


class CountEmbeddedFn(beam.DoFn):
    def __init__(self):
        self._embedded = counter("images_embedded")

    def process(self, element):
        self._embedded.inc()
        yield element


class WriteParquet(beam.PTransform):
    """Embeddings to sharded Parquet through Beam's sink; outputs embedded (int), failed."""

    def __init__(self, output: str, schema: pa.Schema, num_shards: int):
        super().__init__()
        self._prefix = output_path(output, EMBEDDINGS)
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, embeddings):
        rows = (
            embeddings
            | "Count embedded" >> beam.ParDo(CountEmbeddedFn())
            | "To rows" >> beam.Map(_parquet_row)
        )
        written = rows | "Write Parquet" >> beam.io.WriteToParquet(
            self._prefix,
            self._schema,
            codec="snappy",
            file_name_suffix=".parquet",
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
        )
        _remove_stale(written, self._prefix, ".parquet", "Remove stale Parquet shards")
        return {
            "embedded": rows | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": embeddings.pipeline | "No store failures" >> beam.Create([]),
        }


class WriteNpyFn(beam.DoFn):
    """One .npy per image under a name derived from its URI; write errors to `failed`."""

    def __init__(self, directory: str):
        self._directory = directory
        self._embedded = counter("images_embedded")

    def process(self, keyed: tuple[ImageKey, np.ndarray]):
        key, embedding = keyed
        name = npy_name(key.uri)
        buffer = io.BytesIO()
        np.save(buffer, embedding, allow_pickle=False)
        try:
            write_atomically(output_path(self._directory, name), buffer.getvalue())
        except Exception as error:
            yield pvalue.TaggedOutput(FAILED, Failure.from_exception(key.uri, "store", error))
        else:
            self._embedded.inc()
            yield _index_line(key, name)


def _index_line(key: ImageKey, name: str) -> str:
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow([key.uri, name, key.width, key.height])
    return line.getvalue()


class WriteNpy(beam.PTransform):
    """Embeddings to one .npy each plus an index CSV; outputs embedded (int), failed."""

    def __init__(self, output: str, num_shards: int):
        super().__init__()
        self._directory = output_path(output, NPY_DIRECTORY)
        self._index = output_path(output, NPY_INDEX)
        self._num_shards = num_shards

    def expand(self, embeddings):
        written = embeddings | "Write .npy" >> beam.ParDo(WriteNpyFn(self._directory)).with_outputs(
            FAILED, main="index"
        )
        index_files = written.index | "Write index" >> beam.io.WriteToText(
            self._index,
            file_name_suffix=".csv",
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
            header="uri,file,width,height",
        )
        _remove_stale(index_files, self._index, ".csv", "Remove stale index shards")
        return {
            "embedded": written.index | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": written[FAILED],
        }


class WriteFailures(beam.PTransform):
    """Failures to the dead letter: JSON lines with uri, stage, error_type, message."""

    def __init__(self, output: str):
        super().__init__()
        self._prefix = output_path(output, FAILURES)

    def expand(self, failures):
        written = (
            failures
            | "To JSON" >> beam.Map(Failure.to_json)
            | "Write dead letter"
            >> beam.io.WriteToText(
                self._prefix, file_name_suffix=".jsonl", shard_name_template=SHARD_TEMPLATE
            )
        )
        return _remove_stale(written, self._prefix, ".jsonl", "Remove stale dead-letter shards")
