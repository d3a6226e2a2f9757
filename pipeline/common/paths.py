"""Local paths made from names that someone else controls (object listings, URIs), each
proved to stay inside its folder."""

from __future__ import annotations

import os
import re

# A plain file name: not empty, not `.` or `..`, no separator of any platform, no control
# character (NUL included). Cloud Storage refuses only `.` and `..` as whole object names,
# so `a/../../b`, `a//b` and `/b` all reach a listing.
_NOT_PLAIN = re.compile(r"[/\\\x00-\x1f\x7f]")


class UnsafeNameError(ValueError):
    """A name that is not a plain relative path, and so could leave its folder."""

    def __init__(self, name: str, segment: str):
        super().__init__(name, segment)  # the args that pickling gives back to __init__
        self.name = name
        self.segment = segment

    def __str__(self) -> str:
        return f"{self.name!r}: segment {self.segment!r} is not a plain file name"


def plain_parts(name: str) -> list[str]:
    """The '/'-separated segments of a relative name, each a plain file name;
    UnsafeNameError otherwise."""
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or _NOT_PLAIN.search(part):
            raise UnsafeNameError(name, part)
    return parts


def path_inside(folder: str, name: str) -> str:
    """folder joined with the relative name, which must stay inside it (plain_parts)."""
    return os.path.join(folder, *plain_parts(name))
