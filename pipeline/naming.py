"""Output names: where each output lives, run ids in shard names, and .npy file names."""

from __future__ import annotations

import hashlib
import re
import time
import uuid

from apache_beam.io.filesystems import FileSystems

EMBEDDINGS = "embeddings"  # Parquet shards: embeddings-RUN-SSSSS-of-NNNNN.parquet
NPY_DIRECTORY = "embeddings"  # one .npy per image in this folder
NPY_INDEX = "embeddings-index"  # and their index: embeddings-index-RUN-*.csv
FAILURES = "failures"
NEIGHBORS = "neighbors"  # neighbors-RUN-SSSSS-of-NNNNN.parquet
DUPLICATES = "duplicates"  # duplicates-RUN-SSSSS-of-NNNNN.csv
SPILL = "_similarity"  # _similarity-RUN-*.spill: the similarity search's working files
SUMMARY = "summary.json"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
RUN_ID_PATTERN = r"\d{8}T\d{6}-[0-9a-f]{6}"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 80


def output_path(output: str, name: str) -> str:
    return FileSystems.join(output, name)


def new_run_id(started_at: float) -> str:
    """e.g. 20261124T011106-3fa2c1 (matches RUN_ID_PATTERN): sortable by start, unique."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def shard_prefix(output: str, name: str, run_id: str) -> str:
    """Shard file prefix; the run id keeps a re-run from meeting the last run's names."""
    return output_path(output, f"{name}-{run_id}")


def spill_prefix(output: str, run_id: str) -> str:
    """Where the similarity search's working files go; dataset readers skip names with _."""
    return output_path(output, f"{SPILL}-{run_id}")


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
