"""The load step: a URI to model-sized RGB uint8 pixels, with a dead letter for what fails."""

from __future__ import annotations

import collections
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue
from google.api_core.exceptions import NotFound
from PIL import Image

from pipeline.common import FAILED, Failure, ImageKey, counter
from pipeline.inputs import images
from pipeline.inputs.fetching import FetchSettings, fetch
from pipeline.inputs.shards import ShardImage, read_member, read_members
from pipeline.inputs.uris import (
    ImageTooLargeError,
    check_uri,
    is_web,
    member_uri,
    open_stored,
    split_member,
)

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Web images fetched at once per worker process: fetching is waiting, on the network and
# on each host's politeness limits, while the harness threads decode and infer.
FETCHES_IN_FLIGHT = 64


def read_bytes(
    uri: str,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    *,
    local_paths: bool = True,
    fetching: FetchSettings | None = None,
    counts: list[str] | None = None,
) -> bytes:
    """The file's bytes, from any filesystem Beam serves (local, gs://, ...) or fetched
    over http(s) as fetching says; refused unread if larger than max_bytes or, for a
    local path, not a regular file. counts: see fetching.fetch."""
    check_uri(uri, local_paths)
    if is_web(uri):
        return fetch(uri, replace(fetching or FetchSettings(), max_bytes=max_bytes), counts)
    member = split_member(uri)
    if member is not None:
        return read_member(*member, max_bytes)
    try:
        with open_stored(uri) as handle:
            if handle.seekable():
                _check_size(uri, _size(handle), max_bytes)
            # At most one byte past the limit, should the file have grown since.
            data = handle.read(max_bytes + 1)
    except NotFound as error:
        raise FileNotFoundError(f"no such object: {uri}") from error
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{uri}: more than --max_image_bytes {max_bytes} bytes")
    return data


def _size(handle) -> int:
    """The size of the file an open handle reads, without reading it.

    Beam's gs:// handle fetched the object's metadata when it opened (one request), so
    seeking to the end costs no other request; FileSystems.match would be a second one,
    and would take a name holding [ or * for a pattern.
    """
    size = handle.seek(0, io.SEEK_END)
    handle.seek(0)
    return size


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageTooLargeError(f"{uri}: {size} bytes, more than --max_image_bytes {max_bytes}")


@dataclass(frozen=True)
class Decoding:
    """How every image of a run is read and decoded: the model's resize rule, JPEG draft
    decoding, the pixel and byte limits (--max_image_pixels, --max_image_bytes), and
    whether a URI without a scheme may be read (on a local runner only: elsewhere it
    would name a file on the worker's own disk)."""

    resize: images.Resize
    jpeg_draft: bool = True
    max_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    local_paths: bool = True
    fetching: FetchSettings | None = None  # how http(s) URIs are fetched; None: defaults

    def load(
        self, uri: str, thumbnail_size: int = 0, counts: list[str] | None = None
    ) -> images.DecodedImage:
        """The image at uri, read and decoded so; raises what reading or decoding raises.
        counts: where a fetch adds its counters' names (see fetching.fetch)."""
        data = read_bytes(
            uri,
            self.max_bytes,
            local_paths=self.local_paths,
            fetching=self.fetching,
            counts=counts,
        )
        return self.decode(data, thumbnail_size)

    def load_all(self, uris: list[str]) -> list[images.DecodedImage | Exception]:
        """Each image, or why it could not be read or decoded, in the order given; the
        members of one shard are read from one stream of it (read_members)."""
        members: dict[str, list[str]] = collections.defaultdict(list)
        for uri in uris:
            if (member := split_member(uri)) is not None:
                members[member[0]].append(member[1])
        read: dict[str, bytes | Exception] = {}
        for shard, names in members.items():
            try:
                check_uri(shard, self.local_paths)
                found = read_members(shard, names, self.max_bytes, self.local_paths)
            except Exception as error:
                found = dict.fromkeys(names, error)
            read.update({member_uri(shard, name): data for name, data in found.items()})
        return [self._attempt(uri, read.get(uri)) for uri in uris]

    def _attempt(self, uri: str, data: bytes | Exception | None):
        try:
            if isinstance(data, Exception):
                raise data
            return self.load(uri) if data is None else self.decode(data)
        except Exception as error:
            return error

    def decode(self, data: bytes, thumbnail_size: int = 0) -> images.DecodedImage:
        """Bytes already read (a shard member's), decoded as load decodes them."""
        return images.decode(data, self.resize, self.jpeg_draft, self.max_pixels, thumbnail_size)


# What the load step takes: a URI, a (uri, kept values) row, or a shard's image member.
Row = str | tuple[str, tuple[str, ...]] | tuple[str, ShardImage]


def _uri_of(row: Row) -> str:
    return row if isinstance(row, str) else row[0]


def _is_member(row: Row) -> bool:
    return not isinstance(row, str) and isinstance(row[1], ShardImage)


class LoadImageFn(beam.DoFn):
    """A URI, a (uri, kept columns) row, or a shard's image member (already read) to
    (ImageKey, uint8 pixels); unreadable or undecodable inputs to `failed`.

    A stored image is read in the step's own thread. A web image is handed to the worker
    process's fetching pool, FETCHES_IN_FLIGHT at a time, and output once fetched and
    decoded (the bundle's last ones as it finishes): fetching is waiting. Beam counts a
    metric only in a thread that runs a step, so the pool's threads collect their
    counters' names and this thread counts them.
    """

    def __init__(self, decoding: Decoding, thumbnail_size: int = 0):
        self._decoding = decoding
        self._thumbnail_size = thumbnail_size
        self._loaded = counter("images_loaded")

    def setup(self):
        # Pillow's own bomb check (in Image.open, and for GIF frames and TIFF tiles as
        # they load, before ours can see the size) then refuses at twice our limit, not
        # twice its default; images.decode restates its message in our terms.
        Image.MAX_IMAGE_PIXELS = self._decoding.max_pixels

    def start_bundle(self):
        self._fetching: collections.deque = collections.deque()

    def process(self, row: Row):
        if _is_member(row):
            uri, member = row
            yield self._output((uri, member.kept), self._decoded(member.data))
            return
        if not is_web(_uri_of(row)):
            yield self._output(row, self._attempt(row))
            return
        self._fetching.append((row, _pool().submit(self._fetched, row)))
        yield from self._fetched_outputs(wait=len(self._fetching) > FETCHES_IN_FLIGHT)

    def finish_bundle(self):
        for output in self._fetched_outputs(wait=True, until_empty=True):
            if isinstance(output, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(output.tag, _in_global_window(output.value))
            else:
                yield _in_global_window(output)

    def _fetched_outputs(self, wait: bool, until_empty: bool = False):
        """The outputs of the fetches done, oldest first; with wait, the oldest's at
        least (until_empty: every one's)."""
        while self._fetching and (wait or self._fetching[0][1].done()):
            row, future = self._fetching.popleft()
            attempt, counted = future.result()
            for name in counted:
                counter(name).inc()
            yield self._output(row, attempt)
            wait = until_empty

    def _fetched(self, row) -> tuple:
        counted: list[str] = []
        return self._attempt(row, counted), counted

    def _attempt(self, row, counts: list[str] | None = None):
        """The decoded image at the row's URI, or the exception that stopped it."""
        try:
            return self._decoding.load(_uri_of(row), self._thumbnail_size, counts)
        except Exception as error:
            return error

    def _decoded(self, data: bytes):
        """The decoded image, or the exception that stopped it."""
        try:
            return self._decoding.decode(data, self._thumbnail_size)
        except Exception as error:
            return error

    def _output(self, row, attempt):
        """(ImageKey, pixels), or the failure tagged for the dead letter; counted."""
        uri, columns = (row, ()) if isinstance(row, str) else row
        if isinstance(attempt, Exception):
            return pvalue.TaggedOutput(FAILED, Failure.from_exception(uri, "load", attempt))
        self._loaded.inc()
        key = ImageKey(uri, attempt.width, attempt.height, attempt.thumbnail, columns)
        return key, attempt.pixels


def _in_global_window(value) -> WindowedValue:
    # What finish_bundle outputs must say; a batch run's elements are all in it.
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The worker process's fetching threads, shared by every harness thread."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(FETCHES_IN_FLIGHT, thread_name_prefix="fetch")
        return _POOL


class LoadImages(beam.PTransform):
    """URIs (or (uri, kept columns) rows) to model-sized RGB uint8 arrays, decoded as
    decoding says (with a JPEG thumbnail of thumbnail_size where > 0); outputs images and
    failed."""

    def __init__(self, decoding: Decoding, thumbnail_size: int = 0):
        super().__init__()
        self._decoding = decoding
        self._thumbnail_size = thumbnail_size

    def expand(self, uris):
        loaded = uris | "Decode" >> beam.ParDo(
            LoadImageFn(self._decoding, self._thumbnail_size)
        ).with_outputs(FAILED, main="images")
        return {"images": loaded.images, "failed": loaded[FAILED]}


class CountFetched(beam.PTransform):
    """Loaded (ImageKey, pixels) pairs to how many were fetched over http(s): one int."""

    def expand(self, images):
        return (
            images
            | "Web images" >> beam.Filter(lambda keyed: is_web(keyed[0].uri))
            | "Count" >> beam.combiners.Count.Globally()
        )
