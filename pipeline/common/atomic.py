"""Whole-file writes: a reader sees the old file or the complete new one, never a part;
and the JSON files written so."""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from apache_beam.io.filesystems import FileSystems


def write_atomically(path: str, data: bytes) -> None:
    """Writes data so that path shows either the old file or the whole new one."""
    if FileSystems.get_scheme(path) not in (None, "file"):
        # Object stores (gs://) publish an object only when its upload completes.
        with FileSystems.create(path) as handle:
            handle.write(data)
        return
    with replacing(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[BinaryIO]:
    """A handle to stream path's new content into: it is written beside path and renamed
    over it once whole, so that path shows the old file or the whole new one, and may be
    the file being read. A failed write leaves path as it was."""
    directory, name = posixpath.split(path)
    partial = posixpath.join(directory, f".{name}.{uuid.uuid4().hex}.partial")
    try:
        with FileSystems.create(partial) as handle:
            yield handle
    except BaseException:
        if FileSystems.exists(partial):
            FileSystems.delete([partial])
        raise
    FileSystems.rename([partial], [path])


def write_json(path: str, value: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's object (JSON only: the output can be written by others), or None."""
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())
