"""The load step: a URI to model-sized RGB uint8 pixels, with a dead letter for what fails."""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import stat
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from google.api_core.exceptions import NotFound
from PIL import Image

from pipeline.common import FAILED, Failure, ImageKey, counter
from pipeline.inputs import images

REFUSED_SCHEMES = ("http", "https")
DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024

# What os.stat can say a path is, when it is not a regular file.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


class UnsupportedUriError(ValueError):
    """A URI this pipeline will not read."""


class ImageTooLargeError(ValueError):
    """A file larger than --max_image_bytes."""


class NotARegularFileError(ValueError):
    """A local path naming a directory, a device, a pipe or a socket."""


def check_uri(uri: str, local_paths: bool = True) -> None:
    """Only storage that Beam's FileSystems serve; never a web URL a CSV row names, nor,
    unless local_paths, a path on the worker's own disk."""
    scheme = FileSystems.get_scheme(uri)
    if scheme is None and not local_paths:
        raise UnsupportedUriError(
            "a local path, which cannot be read on a remote runner (it would name a file "
            "on the worker's own disk); copy the images to Cloud Storage and list their "
            "gs:// URIs"
        )
    if scheme in REFUSED_SCHEMES:
        # A row must not make a worker request an arbitrary URL, such as the cloud
        # metadata server that holds the worker's credentials.
        raise UnsupportedUriError(
            f"{scheme}:// URIs are not fetched; copy the images to Cloud Storage "
            "and list their gs:// URIs"
        )
    if scheme not in served_schemes():
        raise UnsupportedUriError(
            f"no Beam filesystem can read {scheme}:// URIs here (its client library is not "
            "installed); copy the images to Cloud Storage and list their gs:// URIs"
        )


# Beam registers these filesystems whether or not their client library is installed;
# without it, opening a file fails with an error that names neither (AssertionError).
_CLIENT_LIBRARIES = {"s3": "boto3", "azfs": "azure.storage.blob", "hdfs": "hdfs"}


@functools.cache
def served_schemes() -> frozenset[str | None]:
    """Schemes of Beam's registered filesystems that can be used here (None: local paths)."""
    schemes = set()
    for system in FileSystem.get_all_subclasses():
        library = _CLIENT_LIBRARIES.get(system.scheme())
        if library is None or importlib.util.find_spec(library.split(".")[0]) is not None:
            schemes.add(system.scheme())
    return frozenset(schemes)


def read_bytes(
    uri: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, *, local_paths: bool = True
) -> bytes:
    """The file's bytes, from any filesystem Beam serves (local, gs://, ...); refused
    unread if larger than max_bytes or, for a local path, not a regular file."""
    check_uri(uri, local_paths)
    if FileSystems.get_scheme(uri) is None:
        # Before opening: opening a fifo blocks until a writer comes, and a device such
        # as /dev/zero reports size 0 and never ends.
        _check_size(uri, _regular_file_size(uri), max_bytes)
    try:
        # UNCOMPRESSED: Beam would otherwise gunzip an image named *.gz on the fly.
        with FileSystems.open(
            uri,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        ) as handle:
            if handle.seekable():
                _check_size(uri, _size(handle), max_bytes)
            # At most one byte past the limit, should the file have grown since.
            data = handle.read(max_bytes + 1)
    except NotFound as error:
        # The same error type for a missing gs:// object as for a missing local file.
        raise FileNotFoundError(f"no such object: {uri}") from error
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{uri}: more than --max_image_bytes {max_bytes} bytes")
    return data


def _regular_file_size(path: str) -> int:
    status = os.stat(path)  # follows links: a link to a device is the device
    for is_kind, kind in _FILE_KINDS:
        if is_kind(status.st_mode):
            raise NotARegularFileError(f"{path} is {kind}, not a regular file")
    return status.st_size


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

    def load(self, uri: str, thumbnail_size: int = 0) -> images.DecodedImage:
        """The image at uri, read and decoded so; raises what reading or decoding raises."""
        data = read_bytes(uri, self.max_bytes, local_paths=self.local_paths)
        return images.decode(data, self.resize, self.jpeg_draft, self.max_pixels, thumbnail_size)


class LoadImageFn(beam.DoFn):
    """A URI, or a (uri, kept columns) row, to (ImageKey, uint8 pixels); unreadable or
    undecodable inputs to `failed`."""

    def __init__(self, decoding: Decoding, thumbnail_size: int = 0):
        self._decoding = decoding
        self._thumbnail_size = thumbnail_size
        self._loaded = counter("images_loaded")

    def setup(self):
        # Pillow's own bomb check (in Image.open, and for GIF frames and TIFF tiles as
        # they load, before ours can see the size) then refuses at twice our limit, not
        # twice its default; images.decode restates its message in our terms.
        Image.MAX_IMAGE_PIXELS = self._decoding.max_pixels

    def process(self, row: str | tuple[str, tuple[str, ...]]):
        uri, columns = (row, ()) if isinstance(row, str) else row
        try:
            decoded = self._decoding.load(uri, self._thumbnail_size)
        except Exception as error:
            yield pvalue.TaggedOutput(FAILED, Failure.from_exception(uri, "load", error))
        else:
            self._loaded.inc()
            key = ImageKey(uri, decoded.width, decoded.height, decoded.thumbnail, columns)
            yield key, decoded.pixels


class LoadImages(beam.PTransform):
    """URIs (or (uri, kept columns) rows) to model-sized RGB uint8 arrays, decoded as
    decoding says (with a JPEG thumbnail of thumbnail_size where > 0); outputs images and
    failed."""

    def __init__(self, decoding: Decoding, thumbnail_size: int = 0):
        super().__init__()
        self._fn = LoadImageFn(decoding, thumbnail_size)

    def expand(self, uris):
        loaded = uris | "Decode" >> beam.ParDo(self._fn).with_outputs(FAILED, main="images")
        return {"images": loaded.images, "failed": loaded[FAILED]}
