"""Fails unless the installed packages are exactly those pinned in a lock file.

The Dockerfile runs it after installing requirements.lock, and the tests run it on the
venv with requirements-dev.lock: the image and the tested environment hold the same
versions of every package, not only of the top-level ones.

    python check_lock.py LOCK_FILE [--ignore NAME ...]
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

# The installer itself and this project are not part of the lock.
ALWAYS_IGNORED = {"pip", "image-embeddings"}


def normalise(name: str) -> str:
    """PEP 503 normalised name: Foo_Bar.baz -> foo-bar-baz."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(lock: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of a pip-style lock file."""
    pins = {}
    for line in lock.read_text().splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if found:
            pins[normalise(found.group(1))] = found.group(3)
    return pins


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter can import."""
    return {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}


def differences(pins: dict[str, str], present: dict[str, str], ignored: set[str]) -> list[str]:
    """One line per package whose installed version is not the pinned one."""
    lines = []
    for name in sorted((pins.keys() | present.keys()) - ignored):
        want, have = pins.get(name), present.get(name)
        if want != have:
            lines.append(f"{name}: lock {want or 'absent'}, installed {have or 'absent'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--ignore", action="append", default=[], help="a package to leave out")
    args = parser.parse_args(argv)
    ignored = ALWAYS_IGNORED | {normalise(name) for name in args.ignore}
    found = differences(pinned(args.lock), installed(), ignored)
    if found:
        print(f"installed packages differ from {args.lock}:", *found, sep="\n  ", file=sys.stderr)
        return 1
    print(f"every installed package is as pinned in {args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
