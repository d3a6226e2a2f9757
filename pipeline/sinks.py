"""Where results go: Parquet or .npy embeddings, the dead letter, and the summary."""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import time
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.io import fileio
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


RUN_ID_PATTERN = r"\d{8}T\d{6}-[0-9a-f]{6}"


def new_run_id(started_at: float) -> str:
    """e.g. 20261124T011106-3fa2c1 (matches RUN_ID_PATTERN): sortable by start, unique."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def shard_prefix(output: str, name: str, run_id: str) -> str:
    """Shard file prefix; the run id keeps a re-run from meeting the last run's names."""
    return output_path(output, f"{name}-{run_id}")


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


def remove_other_runs(written, output: str, name: str, suffix: str, run_id: str):
    """Once written (this run's final shard names) is complete, deletes other runs' shards."""
    return (
        written
        | f"List written {name}" >> beam.combiners.ToList()
        | f"Remove earlier {name}"
        >> beam.ParDo(RemoveOtherRunsShardsFn(output, name, suffix, run_id))
    )


def csv_line(fields) -> str:
    """One CSV record without its line end, quoted as the csv module does."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(fields)
    return line.getvalue()


def csv_fields(line: str) -> list[str]:
    return next(csv.reader([line]))


def _first_csv_field(line: str) -> str:
    return csv_fields(line)[0]


class ReadEmbeddedUris(beam.PTransform):
    """URIs already embedded under the output: the record of work an earlier run did."""

    def __init__(self, output: str, output_format: str):
        super().__init__()
        self._output = output
        self._format = output_format

    def expand(self, pbegin):
        if self._format == "parquet":
            pattern, read = (
                output_path(self._output, f"{EMBEDDINGS}-*.parquet"),
                beam.io.ReadAllFromParquet(columns=["uri"]) | beam.Map(lambda row: row["uri"]),
            )
        else:
            pattern, read = (
                output_path(self._output, f"{NPY_INDEX}-*.csv"),
                beam.io.ReadAllFromText(skip_header_lines=1) | beam.Map(_first_csv_field),
            )
        return (
            pbegin
            | "Match earlier outputs"
            >> fileio.MatchFiles(pattern, empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Read URIs" >> read
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
    """Embeddings to sharded Parquet through Beam's sink; outputs embedded (int), failed, files."""

    def __init__(
        self, output: str, run_id: str, schema: pa.Schema, num_shards: int, keep_earlier: bool
    ):
        super().__init__()
        self._keep_earlier = keep_earlier
        self._output = output
        self._run_id = run_id
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, embeddings):
        rows = (
            embeddings
            | "Count embedded" >> beam.ParDo(CountEmbeddedFn())
            | "To rows" >> beam.Map(_parquet_row)
        )
        written = rows | "Write Parquet" >> beam.io.WriteToParquet(
            shard_prefix(self._output, EMBEDDINGS, self._run_id),
            self._schema,
            codec="snappy",
            file_name_suffix=".parquet",
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
        )
        if not self._keep_earlier:
            remove_other_runs(written, self._output, EMBEDDINGS, ".parquet", self._run_id)
        return {
            "embedded": rows | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": embeddings.pipeline | "No store failures" >> beam.Create([]),
            "files": written,
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
    return csv_line([key.uri, name, key.width, key.height])


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
    """Embeddings to one .npy each plus an index CSV; outputs embedded (int), failed, files."""

    def __init__(self, output: str, run_id: str, num_shards: int, keep_earlier: bool):
        super().__init__()
        self._keep_earlier = keep_earlier
        self._output = output
        self._run_id = run_id
        self._num_shards = num_shards

    def expand(self, embeddings):
        written = embeddings | "Write .npy" >> beam.ParDo(
            WriteNpyFn(output_path(self._output, NPY_DIRECTORY))
        ).with_outputs(FAILED, main="index")
        index_files = written.index | "Write index" >> WriteRunShards(
            self._output,
            NPY_INDEX,
            ".csv",
            self._run_id,
            header="uri,file,width,height",
            num_shards=self._num_shards,
            keep_earlier=self._keep_earlier,
        )
        return {
            "embedded": written.index | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": written[FAILED],
            "files": index_files,
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
