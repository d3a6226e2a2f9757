"""Writers: Parquet shards, one .npy per image with its index, text shards, the dead letter.

Each writes into the run's own folder (its `stage`), from which the Publish step moves
the files into place once the run has passed; .npy files go straight to their run's
folder under embeddings/, which no reader finds before an index file lists it.
"""

from __future__ import annotations

import io
import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue

from pipeline.common import (
    FAILED,
    Failure,
    ImageKey,
    counter,
    csv_line,
    unwritable,
    write_atomically,
)
from pipeline.outputs.columns import LABEL_COLUMNS, NO_EXTRA_COLUMNS, RowColumns
from pipeline.outputs.kinds import FileKind
from pipeline.outputs.naming import (
    EMBEDDINGS,
    FAILURES,
    NPY_DIRECTORY,
    NPY_INDEX,
    SHARD_TEMPLATE,
    datapoint_id,
    npy_name,
    output_path,
    shard_prefix,
)

# Columns every Parquet shard has besides the kept ones; --keep_columns may not reuse them.
PARQUET_COLUMNS = ("uri", "embedding", "width", "height", "datapoint_id", "model", "run_id")


def parquet_schema(
    shape: tuple[int, ...], metadata: dict[str, str], columns: RowColumns = NO_EXTRA_COLUMNS
) -> pa.Schema:
    """uri, embedding, width, height, datapoint_id, the extra columns (RowColumns), model,
    run_id."""
    size = int(np.prod(shape))
    return pa.schema(
        [
            ("uri", pa.string()),
            ("embedding", pa.list_(pa.float32(), size)),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("datapoint_id", pa.string()),
            *columns.arrow_fields(),
            ("model", pa.string()),
            ("run_id", pa.string()),
        ],
        metadata={**metadata, "embedding_shape": json.dumps(list(shape))},
    )


def label_fields(key: ImageKey) -> dict:
    """The label columns of a labelled image's key; none for an unlabelled one."""
    found = key.labels
    if found is None:
        return {}
    values = (found.label, found.score, list(found.top), list(found.top_scores))
    return dict(zip(LABEL_COLUMNS, values, strict=True))


def parquet_row(
    keyed: tuple[ImageKey, np.ndarray], columns: RowColumns, model: str, run_id: str
) -> dict:
    key, embedding = keyed
    return {
        "uri": key.uri,
        "embedding": embedding.reshape(-1),
        "width": key.width,
        "height": key.height,
        "datapoint_id": datapoint_id(key.uri),
        **label_fields(key),
        **dict(zip(columns.scores, key.scores, strict=True)),
        **dict(zip(columns.kept, key.columns, strict=True)),
        # Decided once the run has found its near-duplicates and matches.
        **dict.fromkeys(columns.decisions),
        "model": model,
        "run_id": run_id,
    }


def refusal(columns: tuple[str, ...], fields: list) -> str | None:
    """Why a record no CSV output can hold is refused, naming its first such field, or
    None."""
    for column, value in zip(columns, fields, strict=True):
        if isinstance(value, str) and (reason := unwritable(value)):
            return f"column {column} {reason}: no CSV output could give it back to every reader"
    return None


def refused(key: ImageKey, message: str) -> Failure:
    # A URI that is not UTF-8 would fail the dead letter too: it is shown escaped.
    shown = key.uri.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return Failure(shown, "store", "UnwritableText", message)


class RefuseUnwritableFn(beam.DoFn):
    """Passes on the embeddings whose URI the CSV outputs (map coordinates, duplicates) can
    hold; the others go to the dead letter (tagged `failed`)."""

    def process(self, keyed: tuple[ImageKey, np.ndarray]):
        message = refusal(("uri",), [keyed[0].uri])
        if message:
            yield pvalue.TaggedOutput(FAILED, refused(keyed[0], message))
        else:
            yield keyed


class CountEmbeddedFn(beam.DoFn):
    def __init__(self):
        self._embedded = counter("images_embedded")

    def process(self, element):
        self._embedded.inc()
        yield element


class WriteParquet(beam.PTransform):
    """Embeddings to sharded Parquet through Beam's sink, in the stage's embeddings/
    folder; outputs embedded (int), failed, files and stored (what the files hold)."""

    def __init__(
        self,
        stage: str,
        run_id: str,
        schema: pa.Schema,
        num_shards: int,
        columns: RowColumns = NO_EXTRA_COLUMNS,
    ):
        super().__init__()
        self._stage = stage
        self._run_id = run_id
        self._schema = schema
        self._num_shards = num_shards
        self._columns = columns

    def expand(self, embeddings):
        checked = embeddings | "Refuse unwritable URIs" >> beam.ParDo(
            RefuseUnwritableFn()
        ).with_outputs(FAILED, main="writable")
        counted = checked.writable | "Count embedded" >> beam.ParDo(CountEmbeddedFn())
        rows = counted | "To rows" >> beam.Map(
            parquet_row,
            self._columns,
            self._schema.metadata[b"model"].decode(),
            self._run_id,
        )
        written = rows | "Write Parquet" >> beam.io.WriteToParquet(
            shard_prefix(self._stage, EMBEDDINGS, self._run_id),
            self._schema,
            codec="snappy",
            file_name_suffix=".parquet",
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
        )
        return {
            "embedded": rows | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": checked[FAILED],
            "files": written,
            "stored": counted,
        }


STORED = "stored"


class WriteNpyFn(beam.DoFn):
    """One .npy per image, embeddings/RUN/NAME.npy with NAME derived from its URI; outputs
    index lines, what was stored (tagged `stored`), and write errors and index records no
    CSV can hold (`failed`)."""

    def __init__(
        self, embeddings_folder: str, run_id: str, columns: tuple[str, ...], curated: bool = False
    ):
        self._directory = output_path(embeddings_folder, run_id)
        self._run_id = run_id
        self._columns = columns
        self._curated = curated
        self._embedded = counter("images_embedded")

    def process(self, keyed: tuple[ImageKey, np.ndarray]):
        key, embedding = keyed
        name = npy_name(key.uri)
        # The index names each file relative to embeddings/.
        fields = _index_fields(key, f"{self._run_id}/{name}")
        if self._curated:
            fields += ["", ""]  # keep, drop_reason: decided once the similar images are found
        message = refusal(self._columns, fields)
        if message:
            yield pvalue.TaggedOutput(FAILED, refused(key, message))
            return
        buffer = io.BytesIO()
        np.save(buffer, embedding, allow_pickle=False)
        try:
            write_atomically(output_path(self._directory, name), buffer.getvalue())
        except Exception as error:
            yield pvalue.TaggedOutput(FAILED, Failure.from_exception(key.uri, "store", error))
        else:
            self._embedded.inc()
            yield csv_line(fields)
            yield pvalue.TaggedOutput(STORED, keyed)


NPY_INDEX_COLUMNS = ("uri", "file", "width", "height", "datapoint_id")


def _index_fields(key: ImageKey, name: str) -> list:
    return [
        key.uri,
        name,
        key.width,
        key.height,
        datapoint_id(key.uri),
        *index_labels(key),
        *map(_float32, key.scores),
        *key.columns,
    ]


def index_labels(key: ImageKey) -> list[str]:
    """The label fields of an index line: the label, its score (9 significant digits,
    a float32 exactly), and the top labels and scores as JSON arrays."""
    found = key.labels
    if found is None:
        return []
    scores = "[" + ",".join(map(_float32, found.top_scores)) + "]"
    return [
        found.label,
        _float32(found.score),
        json.dumps(list(found.top), ensure_ascii=False),
        scores,
    ]


def _float32(value: float) -> str:
    return f"{float(np.float32(value)):.9g}"


class WriteRunShards(beam.PTransform):
    """Text lines to FOLDER/NAME-RUNID-SSSSS-of-NNNNN.SUFFIX shards; outputs the final
    file names."""

    def __init__(
        self,
        folder: str,
        name: str,
        suffix: str,
        run_id: str,
        *,
        header: str | None = None,
        num_shards: int = 0,
    ):
        super().__init__()
        self._folder = folder
        self._name = name
        self._suffix = suffix
        self._run_id = run_id
        self._header = header
        self._num_shards = num_shards

    def expand(self, lines):
        return lines | "Write shards" >> beam.io.WriteToText(
            shard_prefix(self._folder, self._name, self._run_id),
            file_name_suffix=self._suffix,
            num_shards=self._num_shards,
            shard_name_template=SHARD_TEMPLATE,
            header=self._header,
        )


class WriteNpy(beam.PTransform):
    """Embeddings to one .npy each (in place) plus an index CSV (uri, file, width, height,
    datapoint_id, the extra columns (RowColumns); staged); outputs embedded (int),
    failed, files and stored."""

    def __init__(
        self,
        output: str,
        stage: str,
        run_id: str,
        num_shards: int,
        columns: RowColumns = NO_EXTRA_COLUMNS,
    ):
        super().__init__()
        self._stage = stage
        self._output = output
        self._run_id = run_id
        self._num_shards = num_shards
        self._columns = columns

    def expand(self, embeddings):
        columns = (*NPY_INDEX_COLUMNS, *self._columns.names)
        written = embeddings | "Write .npy" >> beam.ParDo(
            WriteNpyFn(
                output_path(self._output, NPY_DIRECTORY),
                self._run_id,
                columns,
                self._columns.curated,
            )
        ).with_outputs(FAILED, STORED, main="index")
        index_files = written.index | "Write index" >> WriteRunShards(
            self._stage,
            NPY_INDEX,
            ".csv",
            self._run_id,
            header=csv_line(columns),
            num_shards=self._num_shards,
        )
        return {
            "embedded": written.index | "Embedded" >> beam.combiners.Count.Globally(),
            "failed": written[FAILED],
            "files": index_files,
            "stored": written[STORED],
        }


class WriteFailures(beam.PTransform):
    """Failures to the dead letter: JSON lines with uri, stage, error_type, message."""

    file_kinds = (FileKind(FAILURES, ".jsonl"),)

    def __init__(self, stage: str, run_id: str):
        super().__init__()
        self._stage = stage
        self._run_id = run_id

    def expand(self, failures):
        return (
            failures
            | "To JSON" >> beam.Map(Failure.to_json)
            | "Write dead letter" >> WriteRunShards(self._stage, FAILURES, ".jsonl", self._run_id)
        )
