"""Output names: where each output lives, run ids in shard names, and .npy file names."""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid

from apache_beam.io.filesystems import FileSystems

EMBEDDINGS_DIRECTORY = "embeddings"  # the embeddings' own folder, for either format
# Parquet shards: embeddings/embeddings-RUN-SSSSS-of-NNNNN.parquet
EMBEDDINGS = f"{EMBEDDINGS_DIRECTORY}/embeddings"
LEGACY_EMBEDDINGS = "embeddings"  # where earlier versions put the shards: beside the rest
NPY_DIRECTORY = EMBEDDINGS_DIRECTORY  # one folder per run here: embeddings/RUN/*.npy
NPY_INDEX = "embeddings-index"  # and their index: embeddings-index-RUN-*.csv
NPY_METADATA = "metadata.json"  # embeddings/RUN/metadata.json: how that run embedded
FAILURES = "failures"
NEIGHBORS = "neighbors"  # neighbors-RUN-SSSSS-of-NNNNN.parquet
DUPLICATES = "duplicates"  # duplicates-RUN-SSSSS-of-NNNNN.csv
MATCHES = "matches"  # --compare_with: matches-RUN-SSSSS-of-NNNNN.parquet
SPILL = "similarity/spill"  # _runs/RUN/similarity/spill-*.arrow: the search's working files
LEGACY_SPILL = "_similarity"  # where earlier versions spilled: OUTPUT/_similarity-RUN-*.spill
VECTORS = "vectors"  # --vector_search_output: vectors-RUN-SSSSS-of-NNNNN.json
COORDINATES = "map-coordinates"  # map-coordinates-RUN-SSSSS-of-NNNNN.csv
MAP_PNG = "map.png"
REPORT_HTML = "report.html"
SUMMARY = "summary.json"
# _runs/RUN/undecided/: where a run that decides what to keep stores its record files
# before their keep and drop_reason are written (pipeline/similarity/keep.py).
UNDECIDED = "undecided"
LEASE = "_lease.json"  # held by the one run writing the output (pipeline/run/lease.py)
# What a passed run's publish renames and deletes, written before the first rename and
# removed after the last delete (pipeline/outputs/journal.py).
JOURNAL = "_publish.json"
# _runs/RUN/: a run's own folder (staged outputs, working files, a failed run's summary);
# dataset readers (pyarrow, Spark, DuckDB's embeddings/ globs) never look there.
RUNS = "_runs"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
# Google's Vector Search pages state no id length limit; URIs up to this many bytes are
# kept as ids, longer ones hashed (datapoint_id), so that no id is unreasonably long.
MAX_DATAPOINT_ID_BYTES = 128
RUN_ID_PATTERN = r"\d{8}T\d{6}-[0-9a-f]{6}"

_SHARD_RUN = re.compile(rf"-({RUN_ID_PATTERN})-\d{{5}}-of-\d{{5}}\.[A-Za-z]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_STEM = 80


def output_path(output: str, name: str) -> str:
    return FileSystems.join(output, name)


def relative_name(folder: str, path: str) -> str:
    """path's name inside folder (a folder's trailing slash kept); ValueError if outside."""
    if FileSystems.get_filesystem(folder).has_dirs():
        name = os.path.relpath(path, folder).replace(os.sep, "/")
        name += "/" if path.endswith("/") and not name.endswith("/") else ""
    else:
        prefix = folder.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under {folder}")
        name = path[len(prefix) :]
    if name.startswith("../") or name in ("", ".", ".."):
        raise ValueError(f"{path} is not under {folder}")
    return name


def matching_files(patterns: list[str]) -> list[str]:
    """The sorted paths that any of the globs match, each once."""
    matched = FileSystems.match(patterns)
    return sorted({metadata.path for result in matched for metadata in result.metadata_list})


def run_of_shard(path: str) -> str | None:
    """The run id in a shard name NAME-RUN-SSSSS-of-NNNNN.SUFFIX, or None."""
    found = _SHARD_RUN.search(path)
    return found.group(1) if found else None


def new_run_id(started_at: float) -> str:
    """e.g. 20261124T011106-3fa2c1 (matches RUN_ID_PATTERN): sortable by start, unique."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def shard_prefix(output: str, name: str, run_id: str) -> str:
    """Shard file prefix; the run id keeps a re-run from meeting the last run's names."""
    return output_path(output, f"{name}-{run_id}")


def run_folder(output: str, run_id: str) -> str:
    """The run's own folder under the output, which it alone writes."""
    return output_path(output, f"{RUNS}/{run_id}")


def run_temp_folder(temp_location: str | None, output: str, run_id: str) -> str:
    """The run's working files' folder: under --temp_location where one is given (always
    on Dataflow), else in the run's own folder."""
    if temp_location:
        return output_path(temp_location, f"image-embeddings/{run_id}")
    return run_folder(output, run_id)


def spill_prefix(temp_folder: str) -> str:
    """Where the similarity search's working files go, in the run's temporary folder."""
    return output_path(temp_folder, SPILL)


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


def datapoint_id(uri: str) -> str:
    """The image's id in Vector Search: its URI, or, for a URI longer than an id may be,
    `sha256:` and the 64 hex digits of the URI's SHA-256.

    Every output records it beside the URI (the datapoint_id column), so results map back.
    """
    if len(uri.encode("utf-8")) <= MAX_DATAPOINT_ID_BYTES:
        return uri
    return "sha256:" + hashlib.sha256(uri.encode("utf-8")).hexdigest()
