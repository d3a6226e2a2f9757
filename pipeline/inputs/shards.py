"""WebDataset shards: tar files whose members sharing a key make one sample (`k.jpg`,
`k.txt`, `k.json`). Each image member is an input row, its URI SHARD.tar#MEMBER.

A shard is streamed once, a member at a time (tarfile's stream mode), never read whole
and never seeked: one read of one object per shard. Samples are grouped as WebDataset
groups them (webdataset.tariterators.group_by_keys): consecutive members with the same
key, the key being the name up to the first dot of its last path part.
"""

from __future__ import annotations

import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue

from pipeline.common import FAILED, Failure, counter
from pipeline.inputs.uris import (
    ImageTooLargeError,
    check_uri,
    is_shard,
    member_uri,
    open_stored,
)

# Extensions (the last part, any case) of the members read as images: what Pillow decodes.
IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm", "pnm"}
)
# How each shard's read adds to the counts: its own listed row becomes its members'.
MEMBER_ROWS, MEMBER_REPEATS = "member_rows", "member_repeats"
# webdataset.tariterators.base_plus_ext: the key, and every extension after its first dot.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# What reading a cut or corrupt stream raises, past tarfile's own ReadError.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


class ShardReadError(ValueError):
    """A shard that is cut short or corrupt: what follows the point named is not read."""


@dataclass(frozen=True)
class ShardImage:
    """An image member as read from its shard: its bytes, and the row's kept values
    (the sibling members', or the listing row's)."""

    kept: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class Member:
    """A regular file of a shard: its bytes, or why they were not read (error)."""

    name: str
    data: bytes | None = None
    error: Exception | None = None

    @property
    def key(self) -> str | None:
        match = _KEY_AND_EXTENSION.match(self.name)
        return match.group(1) if match else None

    @property
    def extension(self) -> str:
        """Everything after the key's dot, lower case, as WebDataset names a sample's field."""
        match = _KEY_AND_EXTENSION.match(self.name)
        return match.group(2).lower() if match else ""

    @property
    def is_image(self) -> bool:
        return self.extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS


class _Header(tarfile.TarInfo):
    """A header that notes on its TarFile why the headers ended: tarfile ends quietly on
    a cut or invalid header after the first, as if the archive had ended there."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            archive.ended_properly = True  # a zero block: the end-of-archive marker
            raise
        except tarfile.HeaderError as error:
            archive.header_error = error
            raise


def stream_members(handle, wanted: Callable[[str], bool], max_bytes: int) -> Iterator[Member]:
    """The shard's regular members in order, with the bytes of those whose name is wanted
    (the others' are streamed past, data None). A wanted member over max_bytes carries an
    ImageTooLargeError, unread. A cut or corrupt shard ends with a Member carrying a
    ShardReadError: named for the member being read, else "" (between members)."""
    count, name = 0, ""
    try:
        with tarfile.open(fileobj=handle, mode="r|*", tarinfo=_Header) as archive:
            for info in archive:
                # Stream mode keeps every header read otherwise (webdataset does the same).
                archive.members = []
                if not info.isreg():
                    continue
                count += 1
                if not wanted(info.name):
                    yield Member(info.name)
                elif info.size > max_bytes:
                    too_large = f"{info.size} bytes, more than --max_image_bytes {max_bytes}"
                    yield Member(info.name, error=ImageTooLargeError(too_large))
                else:
                    name = info.name
                    yield Member(name, archive.extractfile(info).read())
                    name = ""
            problem = _end_problem(archive)
    except _READ_ERRORS as error:
        problem = f"{type(error).__name__}: {error}"
    if problem:
        where = "inside this member" if name else f"after its {count} members"
        yield Member(name, error=ShardReadError(f"the shard is cut or corrupt {where} ({problem})"))


def _end_problem(archive: tarfile.TarFile) -> str:
    """Why the headers ended, if not at the end-of-archive marker that tar writers write."""
    if getattr(archive, "ended_properly", False):
        return ""
    error = getattr(archive, "header_error", None)
    if error is None or isinstance(error, tarfile.EmptyHeaderError):
        return "it ends without the end-of-archive marker"
    return f"{type(error).__name__}: {error}"


def samples(members: Iterator[Member]) -> Iterator[list[Member]]:
    """Consecutive members with the same key, as one sample each."""
    sample: list[Member] = []
    for member in members:
        if sample and member.key != sample[0].key:
            yield sample
            sample = []
        sample.append(member)
    if sample:
        yield sample


def open_shard(shard: str, local_paths: bool = True):
    check_uri(shard, local_paths)
    return open_stored(shard)


def read_member(shard: str, name: str, max_bytes: int, local_paths: bool = True) -> bytes:
    """One member's bytes (read_members)."""
    found = read_members(shard, [name], max_bytes, local_paths)[name]
    if isinstance(found, Exception):
        raise found
    return found


def read_members(
    shard: str, names: list[str], max_bytes: int, local_paths: bool = True
) -> dict[str, bytes | Exception]:
    """Each named member's bytes, or why they could not be read, from one stream of the
    shard read only as far as the last of them: FileNotFoundError for a name the shard
    lacks, ShardReadError for one past a cut or corrupt point."""
    wanted = set(names)
    found: dict[str, bytes | Exception] = {}
    with open_shard(shard, local_paths) as handle:
        for member in stream_members(handle, wanted.__contains__, max_bytes):
            if member.name in wanted:
                found.setdefault(member.name, member.error or member.data)
            if isinstance(member.error, ShardReadError):  # nothing past it can be read
                found.update({name: member.error for name in wanted - found.keys()})
            if found.keys() >= wanted:
                break
    for name in wanted - found.keys():
        found[name] = FileNotFoundError(f"{shard} has no member {name}")
    return {name: found[name] for name in names}


def image_uris(shard: str, local_paths: bool = True) -> Iterator[str]:
    """The URIs of the shard's image members in order, read no further than asked for;
    none past a point it cannot be read."""
    with open_shard(shard, local_paths) as handle:
        for member in stream_members(handle, lambda name: False, 0):
            if member.error is None and member.is_image:
                yield member_uri(shard, member.name)


class OpenShardsFn(beam.DoFn):
    """A (uri, kept values) row naming a shard to one row per image member, (SHARD#MEMBER,
    ShardImage); any other row passes as it is.

    extensions: with a listing of shards, --keep_columns names sibling members'
    extensions, and a member's kept values are its siblings' text (empty when a sample
    has none); None: the listing row's kept values go with each of its members.

    Every member is accounted for: a member repeated in its shard is a duplicate, one
    unreadable (too large, a sibling not UTF-8 text, cut short) a read failure, and so
    is what follows a cut or corrupt point. MEMBER_ROWS carries how many rows each shard
    adds to the rows with a URI (its image rows and repeats, less its own listed row).
    """

    def __init__(self, extensions: tuple[str, ...] | None, max_bytes: int, local_paths: bool):
        # Matched as WebDataset names a sample's fields: in lower case.
        self._extensions = tuple(e.lower() for e in extensions) if extensions is not None else None
        self._max_bytes = max_bytes
        self._local_paths = local_paths
        self._rows = counter("rows_read")

    def process(self, row: tuple[str, tuple[str, ...]]):
        uri, kept = row
        if not is_shard(uri):
            blank = ("",) * len(self._extensions) if self._extensions is not None else kept
            yield uri, kept if self._extensions is None else blank
            return
        images, repeats, failures = 0, 0, 0
        for output in self._read(uri, kept):
            if isinstance(output, pvalue.TaggedOutput):
                failures += output.tag == FAILED
                repeats += output.tag == MEMBER_REPEATS
            else:
                images += 1
            yield output
        self._rows.inc(images + repeats + failures - 1)
        yield pvalue.TaggedOutput(MEMBER_ROWS, images + repeats - 1)

    def _read(self, shard: str, listed: tuple[str, ...]):
        seen: set[str] = set()
        accounted = False
        try:
            with open_shard(shard, self._local_paths) as handle:
                members = stream_members(handle, self._wanted, self._max_bytes)
                for sample in samples(members):
                    for output in self._rows_of(shard, sample, listed, seen):
                        accounted = True
                        yield output
        except Exception as error:
            yield pvalue.TaggedOutput(FAILED, Failure.from_exception(shard, "read", error))
            return
        if not accounted:
            message = f"no member named as an image ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            yield pvalue.TaggedOutput(FAILED, Failure(shard, "read", "NoImagesInShard", message))

    def _wanted(self, name: str) -> bool:
        member = Member(name)
        return member.is_image or member.extension in (self._extensions or ())

    def _rows_of(self, shard: str, sample: list[Member], listed: tuple[str, ...], seen: set[str]):
        for member in sample:
            if isinstance(member.error, ShardReadError) and not member.is_image:
                # Cut or corrupt between members or in a sibling: the rest of the shard.
                yield pvalue.TaggedOutput(
                    FAILED, Failure.from_exception(shard, "read", member.error)
                )
        kept, unkept = self._kept(sample, listed)
        for member in sample:
            if not member.is_image:
                continue
            uri = member_uri(shard, member.name)
            if member.name in seen:
                yield pvalue.TaggedOutput(MEMBER_REPEATS, 1)
                continue
            seen.add(member.name)
            if member.error is not None:
                yield pvalue.TaggedOutput(FAILED, Failure.from_exception(uri, "read", member.error))
            elif unkept is not None:
                yield pvalue.TaggedOutput(FAILED, Failure(uri, "read", *unkept))
            else:
                yield uri, ShardImage(kept, member.data)

    def _kept(
        self, sample: list[Member], listed: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, str] | None]:
        """The sample's kept values, or why they cannot be read (error type, message)."""
        if self._extensions is None:
            return listed, None
        by_extension = {member.extension: member for member in sample}
        values = []
        for extension in self._extensions:
            sibling = by_extension.get(extension)
            if sibling is None:
                values.append("")
            elif sibling.error is not None:
                return (), (type(sibling.error).__name__, f"its {sibling.name}: {sibling.error}")
            else:
                try:
                    values.append(sibling.data.decode("utf-8"))
                except UnicodeDecodeError as error:
                    why = f"its {sibling.name} is not UTF-8 text ({error.reason} at byte "
                    return (), ("UnicodeDecodeError", f"{why}{error.start})")
        return tuple(values), None


class OpenShards(beam.PTransform):
    """(uri, kept values) rows, with each shard's row replaced by its image members'
    rows (OpenShardsFn); outputs rows, failed, and per shard member_rows and repeats."""

    def __init__(self, extensions: tuple[str, ...] | None, max_bytes: int, local_paths: bool):
        super().__init__()
        self._fn = OpenShardsFn(extensions, max_bytes, local_paths)

    def expand(self, rows):
        return rows | "Open shards" >> beam.ParDo(self._fn).with_outputs(
            FAILED, MEMBER_ROWS, MEMBER_REPEATS, main="rows"
        )
