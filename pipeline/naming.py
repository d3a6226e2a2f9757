"""Deterministic, collision-free file names for per-image outputs."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 80


def npy_name(uri: str) -> str:
    """Maps a URI to a flat file name: readable base name plus a hash of the whole URI.

    gs://b/a/cat.jpg -> cat.jpg.<24 hex digits>.npy. The hash (96 bits of SHA-256 of
    the exact URI string) keeps a/cat.jpg and b/cat.jpg apart; the name never holds a
    path separator, so it cannot leave the output directory.
    """
    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:24]
    base = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = _UNSAFE.sub("_", base)[:_MAX_STEM].strip("._") or "image"
    return f"{stem}.{digest}.npy"
