"""Whole-file writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import posixpath
import uuid

from apache_beam.io.filesystems import FileSystems


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
