"""A GroupByKey whose values travel through files, so that the runner shuffles file ranges.

Beam's local runners hold every value of a GroupByKey in the launching process's memory;
grouping millions of embeddings that way would grow with the collection. Here each worker
appends values to a file of its own (one per bundle or per SPILL_BYTES), and only
(key, (file, offset, length)) goes through the GroupByKey: memory stays flat on every
runner. A retried bundle leaves an unreferenced file, removed with the rest.

A spill file is an Arrow IPC stream holding data only: one record batch per key, each
value a JSON text (None, bool, int, float, str, lists, tuples) whose numeric numpy arrays
travel beside it as raw bytes. Reading one parses JSON and copies numbers; nothing in a
file can name code to run, and bytes that are not such a batch are refused.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Hashable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipeline.outputs import matching_files

SPILL_SUFFIX = ".arrow"
SPILL_BYTES = 128 * 1024 * 1024  # most encoded bytes one worker buffers before writing
SCHEMA = pa.schema([("value", pa.large_string()), ("arrays", pa.list_(pa.large_binary()))])
_NUMERIC = "biufc"  # numpy dtype kinds a spill file holds: no objects, strings or voids
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an IPC stream's end marker

FileRange = tuple[str, int, int]  # path, offset, length
Encoded = tuple[str, list[bytes]]  # a value's JSON text and its arrays' bytes


class SpillFileError(ValueError):
    """Bytes at a spill file range that are not a spill record batch."""


def encode(value: Any) -> Encoded:
    """A value as JSON text and the bytes of the numpy arrays in it, depth first."""
    arrays: list[bytes] = []
    return json.dumps(_tree(value, arrays), separators=(",", ":")), arrays


def _tree(value: Any, arrays: list[bytes]) -> Any:
    if isinstance(value, np.ndarray | np.generic):  # before float and str: np.float64, np.str_
        array = np.asarray(value)
        if array.dtype.kind not in _NUMERIC:
            raise TypeError(f"spill files hold numeric numpy arrays, not dtype {array.dtype}")
        arrays.append(array.tobytes())
        kind = "scalar" if isinstance(value, np.generic) else "array"
        return {kind: [array.dtype.str, list(array.shape)]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_tree(item, arrays) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [_tree(item, arrays) for item in value]}
    raise TypeError(
        "spill files hold None, bool, int, float, str, lists, tuples and numeric numpy "
        f"arrays, not {type(value).__name__}"
    )


def decode(text: str, arrays: Iterator[pa.Buffer]) -> Any:
    """encode's value back: the same types, every number's bits unchanged."""
    return _value(json.loads(text), arrays)


def _value(tree: Any, arrays: Iterator[pa.Buffer]) -> Any:
    if isinstance(tree, list):
        return [_value(item, arrays) for item in tree]
    if not isinstance(tree, dict):
        return tree
    ((kind, content),) = tree.items()
    if kind == "tuple":
        return tuple(_value(item, arrays) for item in content)
    dtype_name, shape = content
    dtype = np.dtype(dtype_name) if isinstance(dtype_name, str) else None
    if kind not in ("array", "scalar") or dtype is None or dtype.kind not in _NUMERIC:
        raise ValueError(f"unknown entry {kind!r} of dtype {dtype_name!r}")
    data = next(arrays, None)
    if data is None:
        raise ValueError("fewer arrays than the values name")
    # A copy: writable, like any grouped value, and not holding the whole range's bytes.
    array = np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return array[()] if kind == "scalar" else array


class SpillFn(beam.DoFn):
    """(key, value) to spill files; yields (key, FileRange) for each key of each file."""

    def __init__(self, prefix: str, spill_bytes: int = SPILL_BYTES):
        self._prefix = prefix
        self._spill_bytes = spill_bytes

    def start_bundle(self):
        self._pending: dict[Hashable, list[Encoded]] = {}
        self._pending_bytes = 0

    def process(self, element: tuple[Hashable, Any]):
        key, value = element
        text, arrays = encode(value)
        self._pending.setdefault(key, []).append((text, arrays))
        self._pending_bytes += len(text) + sum(len(array) for array in arrays)
        if self._pending_bytes >= self._spill_bytes:
            yield from self._write()

    def finish_bundle(self):
        for keyed_range in self._write():
            yield GlobalWindows.windowed_value(keyed_range)

    def _write(self) -> list[tuple[Hashable, FileRange]]:
        if not self._pending:
            return []
        path = f"{self._prefix}-{uuid.uuid4().hex}{SPILL_SUFFIX}"
        ranges = []
        with FileSystems.create(path, mime_type="application/vnd.apache.arrow.stream") as handle:
            schema = SCHEMA.serialize()
            handle.write(schema)
            offset = schema.size
            for key in list(self._pending):  # each key's values leave as its batch is made
                data = _batch(self._pending.pop(key)).serialize()
                handle.write(data)
                ranges.append((key, (path, offset, data.size)))
                offset += data.size
            handle.write(_EOS)
        self._pending_bytes = 0
        return ranges


def _batch(encoded: list[Encoded]) -> pa.RecordBatch:
    texts = pa.array([text for text, _ in encoded], pa.large_string())
    arrays = pa.array([arrays for _, arrays in encoded], SCHEMA.field("arrays").type)
    return pa.record_batch([texts, arrays], schema=SCHEMA)


@functools.cache
def _gcs():
    from apache_beam.io.gcp import gcsio

    return gcsio.GcsIO()


def _open_for(path: str, length: int):
    if path.startswith("gs://"):
        # FileSystems.open reads gs:// in 16 MiB chunks whatever is asked, so a range of
        # a few KB would download 16 MiB; GcsIO takes the chunk size.
        return _gcs().open(path, "rb", read_buffer_size=max(length, 1))
    return FileSystems.open(path, mime_type="application/octet-stream")


def read_range(file_range: FileRange) -> list[Any]:
    """The values one SpillFn wrote for one key into one file, in the order written.

    Raises SpillFileError, naming the file, for bytes that are not a spill record batch.
    """
    path, offset, length = file_range
    with _open_for(path, length) as handle:
        handle.seek(offset)
        data = handle.read(length)
    try:
        if len(data) != length:
            raise ValueError(f"{len(data)} bytes where {length} were written")
        batch = pa.ipc.read_record_batch(pa.py_buffer(data), SCHEMA)
        batch.validate(full=True)  # offsets inside the buffers, strings UTF-8
        texts, arrays = batch.columns
        return [
            decode(text.as_py(), (item.as_buffer() for item in items.values))
            for text, items in zip(texts, arrays, strict=True)
        ]
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError, OSError) as e:
        raise SpillFileError(
            f"{path} (bytes {offset} to {offset + length}) is not a record batch of "
            f"{SPILL_SUFFIX} spill values, so it is not read: {e}"
        ) from e


def read_values(keyed_ranges: tuple[Hashable, list[FileRange]]) -> tuple[Hashable, list[Any]]:
    key, ranges = keyed_ranges
    values: list[Any] = []
    for file_range in sorted(ranges):
        values.extend(read_range(file_range))
    return key, values


class GroupThroughFiles(beam.PTransform):
    """(key, value) to (key, [values]) like GroupByKey, the values passing through files
    named PREFIX-*.arrow.

    Takes one PCollection or a tuple of them, grouped together: each is spilled where it
    is made and only the file ranges are flattened, since a local runner holds in the
    launching process whatever a Flatten joins from separate steps.
    """

    def __init__(self, prefix: str, spill_bytes: int = SPILL_BYTES):
        super().__init__()
        self._prefix = prefix
        self._spill_bytes = spill_bytes

    def expand(self, pairs):
        parts = pairs if isinstance(pairs, tuple) else (pairs,)
        ranges = [
            part
            | ("Spill" if len(parts) == 1 else f"Spill {index}")
            >> beam.ParDo(SpillFn(self._prefix, self._spill_bytes))
            for index, part in enumerate(parts)
        ]
        if len(ranges) > 1:
            ranges = [tuple(ranges) | "Spilled ranges" >> beam.Flatten()]
        return (
            ranges[0]
            | "Group ranges" >> beam.GroupByKey()
            | "Read spilled" >> beam.Map(read_values)
        )


class RemoveSpillFilesFn(beam.DoFn):
    """Deletes one run's spill files, PREFIX-*.arrow, once the side inputs it is given say
    that nothing reads them any more; other runs' files stay."""

    def __init__(self, prefix: str):
        self._pattern = f"{prefix}-*{SPILL_SUFFIX}"

    def process(self, unused, *unused_finished):
        matched = matching_files([self._pattern])
        if matched:
            FileSystems.delete(matched)
        yield len(matched)
