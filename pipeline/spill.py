"""A GroupByKey whose values travel through files, so that the runner shuffles file ranges.

Beam's local runners hold every value of a GroupByKey in the launching process's memory;
grouping millions of embeddings that way would grow with the collection. Here each worker
appends pickled values to a file of its own (one per bundle or per SPILL_BYTES), and only
(key, (file, offset, length)) goes through the GroupByKey: memory stays flat on every
runner. A retried bundle leaves an unreferenced file, removed with the rest.
"""

from __future__ import annotations

import functools
import io
import pickle
import uuid
from collections.abc import Hashable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from pipeline.naming import SPILL, matching_files, output_path

SPILL_SUFFIX = ".spill"
SPILL_BYTES = 128 * 1024 * 1024  # most pickled bytes one worker buffers before writing

FileRange = tuple[str, int, int]  # path, offset, length


class SpillFn(beam.DoFn):
    """(key, value) to spill files; yields (key, FileRange) for each key of each file."""

    def __init__(self, prefix: str, spill_bytes: int = SPILL_BYTES):
        self._prefix = prefix
        self._spill_bytes = spill_bytes

    def start_bundle(self):
        self._pending: dict[Hashable, list[bytes]] = {}
        self._pending_bytes = 0

    def process(self, element: tuple[Hashable, Any]):
        key, value = element
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending.setdefault(key, []).append(data)
        self._pending_bytes += len(data)
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
        offset = 0
        with FileSystems.create(path, mime_type="application/octet-stream") as handle:
            for key, chunks in self._pending.items():
                data = b"".join(chunks)
                handle.write(data)
                ranges.append((key, (path, offset, len(data))))
                offset += len(data)
        self._pending = {}
        self._pending_bytes = 0
        return ranges


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
    """The values one SpillFn wrote for one key into one file, in the order written."""
    path, offset, length = file_range
    with _open_for(path, length) as handle:
        handle.seek(offset)
        data = io.BytesIO(handle.read(length))
    values = []
    while data.tell() < length:
        values.append(pickle.load(data))
    return values


def read_values(keyed_ranges: tuple[Hashable, list[FileRange]]) -> tuple[Hashable, list[Any]]:
    key, ranges = keyed_ranges
    values: list[Any] = []
    for file_range in sorted(ranges):
        values.extend(read_range(file_range))
    return key, values


class GroupThroughFiles(beam.PTransform):
    """(key, value) to (key, [values]) like GroupByKey, the values passing through files
    named PREFIX-*.spill."""

    def __init__(self, prefix: str, spill_bytes: int = SPILL_BYTES):
        super().__init__()
        self._prefix = prefix
        self._spill_bytes = spill_bytes

    def expand(self, pairs):
        return (
            pairs
            | "Spill" >> beam.ParDo(SpillFn(self._prefix, self._spill_bytes))
            | "Group ranges" >> beam.GroupByKey()
            | "Read spilled" >> beam.Map(read_values)
        )


class RemoveSpillFilesFn(beam.DoFn):
    """Deletes the output's spill files (this run's, and any a crashed run left), once the
    side inputs it is given say that nothing reads them any more."""

    def __init__(self, output: str):
        self._pattern = output_path(output, f"{SPILL}-*{SPILL_SUFFIX}")

    def process(self, unused, *unused_finished):
        matched = matching_files([self._pattern])
        if matched:
            FileSystems.delete(matched)
        yield len(matched)
