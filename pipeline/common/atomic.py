"""Whole-file writes: a reader sees the old file or the complete new one, never a part;
and the JSON files written so."""

from __future__ import annotations

import json
import posixpath
import uuid
from typing import Any

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


def write_json(path: str, value: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(value, indent=2) + "\n").encode())


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's object (JSON only: the output can be written by others), or None."""
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as handle:
        return json.loads(handle.read())
