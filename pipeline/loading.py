"""The load step: a URI to model-sized RGB uint8 pixels, with a dead letter for what fails."""

from __future__ import annotations

import functools
import importlib.util

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from google.api_core.exceptions import NotFound
from PIL import Image

from pipeline import images
from pipeline.metrics import counter
from pipeline.records import FAILED, Failure, ImageKey

REFUSED_SCHEMES = ("http", "https")


class UnsupportedUriError(ValueError):
    """A URI this pipeline will not read."""


def check_uri(uri: str) -> None:
    """Only storage that Beam's FileSystems serve; never a web URL a CSV row names."""
    scheme = FileSystems.get_scheme(uri)
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


def read_bytes(uri: str) -> bytes:
    """The file's bytes, from any filesystem Beam serves (local, gs://, ...)."""
    check_uri(uri)
    try:
        # UNCOMPRESSED: Beam would otherwise gunzip an image named *.gz on the fly.
        with FileSystems.open(
            uri,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        ) as handle:
            return handle.read()
    except NotFound as error:
        # The same error type for a missing gs:// object as for a missing local file.
        raise FileNotFoundError(f"no such object: {uri}") from error


class LoadImageFn(beam.DoFn):
    """A URI, or a (uri, kept columns) row, to (ImageKey, uint8 pixels); unreadable or
    undecodable inputs to `failed`."""

    def __init__(
        self, size: int, policy: str, jpeg_draft: bool, max_pixels: int, thumbnail_size: int = 0
    ):
        self._size = size
        self._policy = policy
        self._jpeg_draft = jpeg_draft
        self._max_pixels = max_pixels
        self._thumbnail_size = thumbnail_size
        self._loaded = counter("images_loaded")

    def setup(self):
        # Pillow's own bomb check (used by formats that allocate while opening) then
        # agrees with ours.
        Image.MAX_IMAGE_PIXELS = self._max_pixels

    def process(self, row: str | tuple[str, tuple[str, ...]]):
        uri, columns = (row, ()) if isinstance(row, str) else row
        try:
            decoded = images.decode(
                read_bytes(uri),
                self._size,
                self._policy,
                self._jpeg_draft,
                self._max_pixels,
                self._thumbnail_size,
            )
        except Exception as error:
            yield pvalue.TaggedOutput(FAILED, Failure.from_exception(uri, "load", error))
        else:
            self._loaded.inc()
            key = ImageKey(uri, decoded.width, decoded.height, decoded.thumbnail, columns)
            yield key, decoded.pixels


class LoadImages(beam.PTransform):
    """URIs (or (uri, kept columns) rows) to model-sized RGB uint8 arrays; outputs images
    and failed."""

    def __init__(
        self, size: int, policy: str, jpeg_draft: bool, max_pixels: int, thumbnail_size: int = 0
    ):
        super().__init__()
        self._fn = LoadImageFn(size, policy, jpeg_draft, max_pixels, thumbnail_size)

    def expand(self, uris):
        loaded = uris | "Decode" >> beam.ParDo(self._fn).with_outputs(FAILED, main="images")
        return {"images": loaded.images, "failed": loaded[FAILED]}
