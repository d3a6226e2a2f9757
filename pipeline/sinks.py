"""Writers: Parquet shards, one .npy per image with its index, text shards, the dead letter."""

from __future__ import annotations

import io
import json
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from pipeline.atomic import write_atomically
from pipeline.csvlines import csv_line
from pipeline.metrics import counter
from pipeline.naming import (
    EMBEDDINGS,
    FAILURES,
    LEGACY_EMBEDDINGS,
    NPY_DIRECTORY,
    NPY_INDEX,
    RUN_ID_PATTERN,
    SHARD_TEMPLATE,
    datapoint_id,
    npy_name,
    output_path,
    shard_prefix,
)
from pipeline.records import FAILED, Failure, ImageKey


class RemoveOtherRunsShardsFn(beam.DoFn):
    """After this run's shards are final, deletes shards that earlier runs left.

    Beam's sink would skip renaming onto an existing shard of the same size (the local
    filesystem's checksum), keeping the old content; unique names per run avoid that,
    and this step keeps a re-run from adding to the previous run's files.
    """

    def __init__(self, output: str, name: str, suffix: str, run_id: str):
        self._base = output_path(output, name)
        self._suffix = suffix
        self._run_id = run_id

    def process(self, unused_written):
        shard = re.compile(
            re.escape(self._base)
            + rf"-(?P<run>{RUN_ID_PATTERN})-\d{{5}}-of-\d{{5}}"
            + re.escape(self._suffix)
            + "$"
        )
        matches = FileSystems.match([f"{self._base}-*-of-*{self._suffix}"])[0].metadata_list
        stale = []
        for metadata in matches:
            found = shard.match(metadata.path)
            if found and found["run"] != self._run_id:
                stale.append(metadata.path)
        if stale:
            FileSystems.delete(stale)
        yield from stale


def remove_other_runs(
    written, output: str, name: str, suffix: str, run_id: str, label: str | None = None
):
    """Once written (this run's final shard names) is complete, deletes other runs' shards
    NAME-RUN-SSSSS-of-NNNNN.SUFFIX (name may hold a folder: embeddings/embeddings)."""
    listed = written | f"List written {label or name}" >> beam.combiners.ToList()
    return remove_other_runs_after(listed, output, name, suffix, run_id, label)


def remove_other_runs_after(
    listed, output: str, name: str, suffix: str, run_id: str, label: str | None = None
):
    """remove_other_runs, given the written names already listed (one element)."""
    return listed | f"Remove earlier {label or name}" >> beam.ParDo(
        RemoveOtherRunsShardsFn(output, name, suffix, run_id)
    )


class RemoveStaleTempFn(beam.DoFn):
    """Deletes the temporary folders that Beam's sink left for NAME in killed runs.

    They sit in the shards' own folder (beam-temp-NAME-RUN-HEX/), where a tool that
    reads the folder as one dataset would find their partial files.
    """

    def __init__(self, output: str, name: str, run_id: str):
        self._folder, self._stem = FileSystems.split(output_path(output, name))
        self._run_id = run_id

    def process(self, unused_listed):
        temp = re.compile(
            re.escape(FileSystems.join(self._folder, f"beam-temp-{self._stem}-"))
            + rf"(?P<run>{RUN_ID_PATTERN})-[0-9a-f]+/"
        )
        listed = FileSystems.match([FileSystems.join(self._folder, "beam-temp-**")])[0]
        stale = set()
        for metadata in listed.metadata_list:
            found = temp.match(metadata.path)
            if found and found["run"] != self._run_id:
                stale.add(found.group(0))
        # A filesystem with directories deletes the folder itself, an object store
        # everything under the prefix.
        has_dirs = FileSystems.get_filesystem(self._folder).has_dirs()
        stale = sorted(path.rstrip("/") if has_dirs else path for path in stale)
        if stale:
            FileSystems.delete(stale)
        yield from stale


# Columns every Parquet shard has besides the kept ones; --keep_columns may not reuse them.
PARQUET_COLUMNS = ("uri", "embedding", "width", "height", "datapoint_id", "model", "run_id")


def parquet_schema(
    shape: tuple[int, ...], metadata: dict[str, str], keep_columns: tuple[str, ...] = ()
) -> pa.Schema:
    """uri, embedding, width, height, datapoint_id, the kept columns, model, run_id."""
    size = int(np.prod(shape))
    return pa.schema(
        [
            ("uri", pa.string()),
            ("embedding", pa.list_(pa.float32(), size)),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("datapoint_id", pa.string()),
            *((name, pa.string()) for name in keep_columns),
            ("model", pa.string()),
            ("run_id", pa.string()),
        ],
        metadata={**metadata, "embedding_shape": json.dumps(list(shape))},
    )


def parquet_row(
    keyed: tuple[ImageKey, np.ndarray], keep_columns: tuple[str, ...], model: str, run_id: str
) -> dict:
    key, embedding = keyed
    return {
        "uri": key.uri,
        "embedding": embedding.reshape(-1),
        "width": key.width,
        "height": key.height,
        "datapoint_id": datapoint_id(key.uri),
        **dict(zip(keep_columns, key.columns, strict=True)),
        "model": model,
        "run_id": run_id,
    }


class CountEmbeddedFn(beam.DoFn):
    def __init__(self):
        self._embedded = counter("images_embedded")

    def process(self, element):
        self._embedded.inc()
        yield element


class WriteParquet(beam.PTransform):
    """Embeddings to sharded Parquet through Beam's sink, in the output's embeddings/
    folder; outputs embedded (int), failed, files and stored (what the files hold)."""

    def __init__(
        self,
        output: str,
        run_id: str,
        schema: pa.Schema,
        num_shards: int,
        keep_earlier: bool,
        keep_columns: tuple[str, ...] = (),
    ):
        super().__init__()
        self._keep_earlier = keep_earlier
        self._output = output
        self._run_id = run_id
        self._schema = schema
        self._num_shards = num_shards
        self._keep_columns = keep_columns

    def expand(self, embeddings):
        counted = embeddings | "Count embedded" >> beam.ParDo(CountEmbeddedFn())
        rows = counted | "To rows" >> beam.Map(
            parquet_row,
            self._keep_columns,
            self._schema.metadata[b"model"].decode(),
            self._run_id,
        )
        written = rows | "Write Parquet" >> beam.io.WriteToParquet(
            shard_prefix(self._output, EMBEDDINGS, self._run_id),
            self._schema,
            codec="snappy",
            file_name_suffix=".parquet",
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
        )
        listed = written | "List written shards" >> beam.combiners.ToList()
        if not self._keep_earlier:
            for name, label in ((EMBEDDINGS, "shards"), (LEGACY_EMBEDDINGS, "legacy")):
                remove_other_runs_after(listed, self._output, name, ".parquet", self._run_id, label)
        _ = listed | "Remove killed runs' temporary files" >> beam.ParDo(
            RemoveStaleTempFn(self._output, EMBEDDINGS, self._run_id)
        )
        return {
            "embedded": rows | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": embeddings.pipeline | "No store failures" >> beam.Create([]),
            "files": written,
            "stored": counted,
        }


STORED = "stored"


class WriteNpyFn(beam.DoFn):
    """One .npy per image under a name derived from its URI; outputs index lines, what was
    stored (tagged `stored`) and write errors (`failed`)."""

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
            yield pvalue.TaggedOutput(STORED, keyed)


NPY_INDEX_COLUMNS = ("uri", "file", "width", "height", "datapoint_id")


def _index_line(key: ImageKey, name: str) -> str:
    return csv_line([key.uri, name, key.width, key.height, datapoint_id(key.uri), *key.columns])


class WriteRunShards(beam.PTransform):
    """Text lines to NAME-RUNID-SSSSS-of-NNNNN.SUFFIX shards; outputs the final file names.

    Once this run's shards are final, other runs' shards of the same name are deleted
    unless keep_earlier.
    """

    def __init__(
        self,
        output: str,
        name: str,
        suffix: str,
        run_id: str,
        *,
        header: str | None = None,
        num_shards: int = 0,
        keep_earlier: bool = False,
    ):
        super().__init__()
        self._output = output
        self._name = name
        self._suffix = suffix
        self._run_id = run_id
        self._header = header
        self._num_shards = num_shards
        self._keep_earlier = keep_earlier

    def expand(self, lines):
        written = lines | "Write shards" >> beam.io.WriteToText(
            shard_prefix(self._output, self._name, self._run_id),
            file_name_suffix=self._suffix,
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
            header=self._header,
        )
        if not self._keep_earlier:
            remove_other_runs(written, self._output, self._name, self._suffix, self._run_id)
        return written


class WriteNpy(beam.PTransform):
    """Embeddings to one .npy each plus an index CSV (uri, file, width, height,
    datapoint_id, the kept columns); outputs embedded (int), failed, files and stored."""

    def __init__(
        self,
        output: str,
        run_id: str,
        num_shards: int,
        keep_earlier: bool,
        keep_columns: tuple[str, ...] = (),
    ):
        super().__init__()
        self._keep_earlier = keep_earlier
        self._output = output
        self._run_id = run_id
        self._num_shards = num_shards
        self._keep_columns = keep_columns

    def expand(self, embeddings):
        written = embeddings | "Write .npy" >> beam.ParDo(
            WriteNpyFn(output_path(self._output, NPY_DIRECTORY))
        ).with_outputs(FAILED, STORED, main="index")
        index_files = written.index | "Write index" >> WriteRunShards(
            self._output,
            NPY_INDEX,
            ".csv",
            self._run_id,
            header=csv_line([*NPY_INDEX_COLUMNS, *self._keep_columns]),
            num_shards=self._num_shards,
            keep_earlier=self._keep_earlier,
        )
        return {
            "embedded": written.index | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": written[FAILED],
            "files": index_files,
            "stored": written[STORED],
        }


class WriteFailures(beam.PTransform):
    """Failures to the dead letter: JSON lines with uri, stage, error_type, message."""

    def __init__(self, output: str, run_id: str):
        super().__init__()
        self._output = output
        self._run_id = run_id

    def expand(self, failures):
        return (
            failures
            | "To JSON" >> beam.Map(Failure.to_json)
            | "Write dead letter" >> WriteRunShards(self._output, FAILURES, ".jsonl", self._run_id)
        )
