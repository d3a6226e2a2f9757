"""Seeded samples that every run and runner draws alike."""

from __future__ import annotations

import hashlib


def seeded_rank(seed: int, key: str) -> str:
    """A sample is the elements whose rank is smallest: SHA-256 of "SEED:KEY"."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
