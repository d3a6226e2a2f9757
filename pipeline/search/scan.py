"""Exact cosine top-k over an output's Parquet shards, read shard by shard and batch by
batch, so that memory holds one batch and the k best, whatever the number of rows."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.outputs import SUMMARY, matching_files, of_runs
from pipeline.search.recorded import Recorded, SearchError

BATCH_ROWS = 4096


@dataclass(frozen=True)
class Match:
    """One result: the image, its cosine similarity to the query and its kept columns."""

    uri: str
    similarity: float
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRows:
    """One batch of stored rows: URIs, (n, d) embeddings, the kept columns' values."""

    uris: list[str]
    embeddings: np.ndarray
    columns: dict[str, list[str]]


def ranking(match: Match) -> tuple[float, str]:
    """Most similar first, ties in URI order (as the neighbours in pipeline/similarity)."""
    return -match.similarity, match.uri


def shard_paths(recorded: Recorded) -> list[str]:
    """The shards of the runs whose embeddings the output holds, in either layout."""
    try:
        paths = matching_files(recorded.shards)
    except Exception as error:
        raise SearchError(f"{recorded.output}'s shards cannot be listed ({error})") from error
    if recorded.runs is not None:
        paths = of_runs(paths, recorded.runs)
    if not paths:
        raise SearchError(f"{recorded.output} holds no embeddings (no shards of its runs)")
    return paths


def stored_rows(
    recorded: Recorded, paths: Iterable[str], batch_rows: int = BATCH_ROWS
) -> Iterator[StoredRows]:
    """Each shard's rows, at most batch_rows at a time (pyarrow's iter_batches)."""
    for path in paths:
        try:
            with FileSystems.open(path) as handle:
                shard = pq.ParquetFile(handle)
                _check_made_alike(recorded, path, shard.schema_arrow.metadata or {})
                kept = [name for name in recorded.keep_columns if name in shard.schema_arrow.names]
                for batch in shard.iter_batches(batch_rows, columns=["uri", "embedding", *kept]):
                    yield _rows(batch, kept)
        except SearchError:
            raise
        except Exception as error:
            raise SearchError(f"{path} cannot be read ({type(error).__name__}: {error})") from error


def _check_made_alike(recorded: Recorded, path: str, metadata: dict[bytes, bytes]) -> None:
    made = {key.decode(): value.decode() for key, value in metadata.items()}
    differ = recorded.made.differences(made)
    if differ:
        shown = ", ".join(f"{key} {made[key]!r}" for key in differ)
        raise SearchError(f"{path} was made with {shown}, not as {SUMMARY} says")


def _rows(batch, kept: list[str]) -> StoredRows:
    uris = batch.column("uri").to_pylist()
    embeddings = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
    return StoredRows(
        uris,
        embeddings.reshape(len(uris), -1),
        {name: batch.column(name).to_pylist() for name in kept},
    )


def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise SearchError("the query's embedding is all zeros: it has no direction to search by")
    return vector / norm


def top_k(batches: Iterable[StoredRows], query: np.ndarray, k: int) -> list[Match]:
    """The k rows most similar to query (cosine, in float64), ties in URI order.

    Stored rows and the query are normalised here: DINOv2 and ResNet rows are stored as
    the model gives them. Each batch offers only its own best k (and rows tied with the
    k-th) to the heap of the k best so far.
    """
    direction = unit(query)
    best: list[Match] = []
    for rows in batches:
        if not rows.uris:
            continue
        matrix = np.asarray(rows.embeddings, dtype=np.float64)
        if matrix.shape[1] != direction.shape[0]:
            raise SearchError(
                f"the stored embeddings have {matrix.shape[1]} values, the query "
                f"{direction.shape[0]}"
            )
        norms = np.linalg.norm(matrix, axis=1)
        dots = matrix @ direction
        similarity = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
        similarity = np.clip(similarity, -1.0, 1.0)
        candidates = _candidates(similarity, k)
        offered = (
            Match(
                rows.uris[i],
                float(similarity[i]),
                {name: values[i] for name, values in rows.columns.items()},
            )
            for i in candidates
        )
        best = heapq.nsmallest(k, itertools.chain(best, offered), key=ranking)
    return best


def _candidates(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, and of every row tied with the k-th."""
    if len(similarity) <= k:
        return np.arange(len(similarity))
    kth = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
    return np.flatnonzero(similarity >= kth)


def search_parquet(
    recorded: Recorded,
    query: np.ndarray,
    k: int,
    paths: list[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> list[Match]:
    """The output's k stored images nearest the query embedding (paths: its shards)."""
    paths = shard_paths(recorded) if paths is None else paths
    found = top_k(stored_rows(recorded, paths, batch_rows), query, k)
    if not found:
        raise SearchError(f"{recorded.output} holds no embeddings (its shards hold no rows)")
    return found
