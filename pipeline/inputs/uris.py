"""What an image URI names and whether this pipeline reads it: a file that Beam's
FileSystems serve, an http(s) URL (fetching.py), or a member of a WebDataset shard,
written SHARD.tar#MEMBER (shards.py)."""

from __future__ import annotations

import functools
import importlib.util
import os
import stat

from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems
from google.api_core.exceptions import NotFound

# Fetched over the web (pipeline/inputs/fetching.py), not through Beam's FileSystems.
WEB_SCHEMES = ("http", "https")
# A WebDataset shard's name ends so, in any case; tarfile reads the gzipped ones too.
SHARD_SUFFIXES = (".tar", ".tgz", ".tar.gz")
MEMBER_SEPARATOR = "#"

# What os.stat can say a path is, when it is not a regular file.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)
# Beam registers these filesystems whether or not their client library is installed;
# without it, opening a file fails with an error that names neither (AssertionError).
_CLIENT_LIBRARIES = {"s3": "boto3", "azfs": "azure.storage.blob", "hdfs": "hdfs"}


class UnsupportedUriError(ValueError):
    """A URI this pipeline will not read."""


class ImageTooLargeError(ValueError):
    """A file (or shard member) larger than --max_image_bytes."""


class NotARegularFileError(ValueError):
    """A local path naming a directory, a device, a pipe or a socket."""


def is_web(uri: str) -> bool:
    return FileSystems.get_scheme(uri) in WEB_SCHEMES


def split_member(uri: str) -> tuple[str, str] | None:
    """(shard, member name) for a URI SHARD.tar#MEMBER (the first shard suffix followed
    by MEMBER_SEPARATOR ends the shard), or None for any other URI."""
    lowered = uri.lower()
    ends = [
        found + len(suffix)
        for suffix in SHARD_SUFFIXES
        if (found := lowered.find(suffix + MEMBER_SEPARATOR)) >= 0
    ]
    if not ends:
        return None
    end = min(ends)
    member = uri[end + len(MEMBER_SEPARATOR) :]
    return (uri[:end], member) if member else None


def member_uri(shard: str, member: str) -> str:
    return f"{shard}{MEMBER_SEPARATOR}{member}"


def is_shard(uri: str) -> bool:
    """A WebDataset shard: a name ending in a SHARD_SUFFIXES suffix, naming no member."""
    return uri.lower().endswith(SHARD_SUFFIXES) and split_member(uri) is None


def check_uri(uri: str, local_paths: bool = True) -> None:
    """Only storage that Beam's FileSystems serve, and http(s) URLs (fetching.fetch checks
    each address); never, unless local_paths, a path on the worker's own disk. A shard is
    read through Beam's FileSystems, never fetched."""
    scheme = FileSystems.get_scheme(uri)
    if scheme is None and not local_paths:
        raise UnsupportedUriError(
            "a local path, which cannot be read on a remote runner (it would name a file "
            "on the worker's own disk); copy the images to Cloud Storage and list their "
            "gs:// URIs"
        )
    if scheme in WEB_SCHEMES and (is_shard(uri) or split_member(uri)):
        raise UnsupportedUriError(
            "a WebDataset shard over http(s): shards are streamed from storage that Beam's "
            "filesystems serve; copy the shards to Cloud Storage and list their gs:// URIs"
        )
    if scheme in WEB_SCHEMES:
        return
    if scheme not in served_schemes():
        raise UnsupportedUriError(
            f"no Beam filesystem can read {scheme}:// URIs here (its client library is not "
            "installed); copy the images to Cloud Storage and list their gs:// URIs"
        )


@functools.cache
def served_schemes() -> frozenset[str | None]:
    """Schemes of Beam's registered filesystems that can be used here (None: local paths)."""
    schemes = set()
    for system in FileSystem.get_all_subclasses():
        library = _CLIENT_LIBRARIES.get(system.scheme())
        if library is None or importlib.util.find_spec(library.split(".")[0]) is not None:
            schemes.add(system.scheme())
    return frozenset(schemes)


def regular_file_size(path: str) -> int:
    """A local file's size; NotARegularFileError for a directory, device, pipe or socket.

    Checked before opening: opening a fifo blocks until a writer comes, and a device such
    as /dev/zero reports size 0 and never ends.
    """
    status = os.stat(path)  # follows links: a link to a device is the device
    for is_kind, kind in _FILE_KINDS:
        if is_kind(status.st_mode):
            raise NotARegularFileError(f"{path} is {kind}, not a regular file")
    return status.st_size


def open_stored(uri: str):
    """An open handle on the bytes stored at uri, as they are stored: Beam would otherwise
    gunzip a name ending in .gz on the fly. A missing gs:// object raises the same error
    as a missing local file (FileNotFoundError)."""
    if FileSystems.get_scheme(uri) is None:
        regular_file_size(uri)
    try:
        return FileSystems.open(
            uri,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )
    except NotFound as error:
        raise FileNotFoundError(f"no such object: {uri}") from error
