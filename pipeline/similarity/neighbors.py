"""Cosine nearest neighbours, the numpy half of the partitioned (IVF) search.

Vectors are centred on the collection's mean and scaled to unit length, so that a dot
product is a cosine similarity. Cells are learned by spherical k-means on a sample, in a
seeded random projection to COARSE_DIMENSIONS (a cheaper sample, hence a larger one);
each vector joins its few most similar cells, and search inside a cell is exact, on the
whole vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

# Similarities are float32 dot products: identical vectors can come out a few ulps
# below 1, so a threshold admits pairs this close below it.
SIMILARITY_TOLERANCE = 1e-6
COARSE_DIMENSIONS = 256
_DEGENERATE = 1e-5  # a centred row this much shorter than the mean: float32 noise
_QUERY_ROWS = 1024  # rows of a cell compared at once: bounds the (rows x cell) block
_KMEANS_ITERATIONS = 20


def uri_rank(uri: str) -> int:
    """A stable 64-bit hash of a URI: the sample and the merge buckets are chosen by it."""
    return int.from_bytes(hashlib.blake2b(uri.encode("utf-8"), digest_size=8).digest(), "big")


def unit_rows(matrix: np.ndarray, mean: np.ndarray | float) -> np.ndarray:
    """Rows minus the mean, scaled to unit length.

    A row equal to the mean has no direction of its own; it takes the mean's, so that
    copies of one image still have similarity 1 when they are the whole collection.
    """
    mean = np.asarray(mean, dtype=np.float32)
    centred = np.asarray(matrix, dtype=np.float32) - mean
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    degenerate = norms[:, 0] <= _DEGENERATE * max(float(np.linalg.norm(mean)), 1e-30)
    if degenerate.any() and mean.ndim:
        centred[degenerate] = mean
        norms[degenerate] = np.linalg.norm(mean)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)


def coarse_basis(dimensions: int, seed: int) -> np.ndarray:
    """(dimensions, COARSE_DIMENSIONS) orthonormal columns, the same for every worker."""
    generator = np.random.default_rng(seed)
    columns = min(COARSE_DIMENSIONS, dimensions)
    gaussian = generator.standard_normal((dimensions, columns))
    return np.linalg.qr(gaussian)[0].astype(np.float32)


def coarse_rows(projected: np.ndarray, projected_mean: np.ndarray | float = 0.0) -> np.ndarray:
    """Projected rows (x @ basis) to the unit directions the cells are learned on."""
    return unit_rows(projected, projected_mean)


def train_centroids(rows: np.ndarray, cells: int, seed: int) -> np.ndarray:
    """Spherical k-means: (cells, d) unit centroids of unit rows, seeded, deterministic."""
    count = len(rows)
    cells = max(1, min(cells, count))
    rng = np.random.default_rng(seed)
    centroids = rows[np.sort(rng.choice(count, cells, replace=False))].copy()
    assignment = None
    for _ in range(_KMEANS_ITERATIONS):
        new_assignment, best = _most_similar(rows, centroids)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sizes = np.bincount(assignment, minlength=cells)
        sums = np.zeros_like(centroids)
        filled = sizes > 0
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        by_cell = rows[np.argsort(assignment, kind="stable")]
        sums[filled] = np.add.reduceat(by_cell, starts[filled], axis=0)
        empty = np.flatnonzero(~filled)
        if len(empty):
            # An empty cell restarts at the rows their centroids describe worst.
            sums[empty] = rows[np.argsort(best)[: len(empty)]]
        centroids = unit_rows(sums, 0.0)
    return centroids


def _most_similar(rows: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar centroid and that similarity, a block of rows at a time."""
    best_index = np.empty(len(rows), dtype=np.int64)
    best = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), _QUERY_ROWS):
        scores = rows[start : start + _QUERY_ROWS] @ centroids.T
        best_index[start : start + _QUERY_ROWS] = np.argmax(scores, axis=1)
        best[start : start + _QUERY_ROWS] = scores.max(axis=1)
    return best_index, best


def nearest_cells(rows: np.ndarray, centroids: np.ndarray, per_row: int) -> np.ndarray:
    """(n, per_row) indices of each row's most similar centroids."""
    cells = centroids.shape[0]
    if per_row >= cells:
        return np.broadcast_to(np.arange(cells), (len(rows), cells))
    nearest = np.empty((len(rows), per_row), dtype=np.int64)
    for start in range(0, len(rows), _QUERY_ROWS):
        scores = rows[start : start + _QUERY_ROWS] @ centroids.T
        nearest[start : start + _QUERY_ROWS] = np.argpartition(-scores, per_row - 1, axis=1)[
            :, :per_row
        ]
    return nearest


def search_cell(
    uris: Sequence[str], rows: np.ndarray, k: int, threshold: float
) -> tuple[list[tuple[str, list[str], list[float]]], list[tuple[int, int, float]]]:
    """Exact search among one cell's unit rows.

    Returns each row's k most similar other rows as (uri, neighbour uris, similarities),
    most similar first with ties in URI order, and, when threshold > 0, every pair of
    rows (i, j), i < j, at similarity >= threshold, as (i, j, similarity).
    """
    count = len(uris)
    names = np.asarray(uris, dtype=object)
    position = np.empty(count, dtype=np.int64)
    position[np.argsort(names)] = np.arange(count)  # each row's place in URI order, for ties
    wanted = min(k, count - 1)
    neighbours: list[tuple[str, list[str], list[float]]] = []
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, count, _QUERY_ROWS):
        stop = min(start + _QUERY_ROWS, count)
        block = rows[start:stop] @ rows.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if k > 0 and wanted == 0:
            neighbours.extend((uri, [], []) for uri in uris[start:stop])
        if wanted > 0:
            top, similarities = _top(block, wanted, position)
            # Lists, not arrays: small values, spilled per image on the way to the merge.
            neighbours.extend(
                zip(uris[start:stop], names[top].tolist(), similarities.tolist(), strict=True)
            )
        if threshold > 0:
            pairs_i, pairs_j = np.nonzero(block >= threshold - SIMILARITY_TOLERANCE)
            above = pairs_i + start < pairs_j
            pairs_i, pairs_j = pairs_i[above], pairs_j[above]
            values = np.minimum(block[pairs_i, pairs_j], 1.0).tolist()
            pairs.extend(zip((pairs_i + start).tolist(), pairs_j.tolist(), values, strict=True))
    return neighbours, pairs


def search_across(
    uris: Sequence[str],
    rows: np.ndarray,
    other_uris: Sequence[str],
    other_rows: np.ndarray,
    k: int,
) -> list[tuple[str, list[str], list[float]]]:
    """Exact search from one cell's rows of one collection into its rows of another.

    Returns each row's k most similar other rows as (uri, other uris, similarities), most
    similar first with ties in URI order; an empty list where the cell holds none of the
    other collection's rows, so that every row is accounted for.
    """
    wanted = min(k, len(other_uris))
    if wanted == 0:
        return [(uri, [], []) for uri in uris]
    names = np.asarray(other_uris, dtype=object)
    position = np.empty(len(names), dtype=np.int64)
    position[np.argsort(names)] = np.arange(len(names))
    found: list[tuple[str, list[str], list[float]]] = []
    for start in range(0, len(uris), _QUERY_ROWS):
        block = rows[start : start + _QUERY_ROWS] @ other_rows.T
        top, similarities = _top(block, wanted, position)
        found.extend(
            zip(
                uris[start : start + _QUERY_ROWS],
                names[top].tolist(),
                similarities.tolist(),
                strict=True,
            )
        )
    return found


def _top(block: np.ndarray, wanted: int, position: np.ndarray):
    """Each row's `wanted` largest entries, largest first, ties going to the smaller position.

    argpartition alone would cut a tie at the last place arbitrarily; rows with such a
    tie are ranked in full.
    """
    top = np.argpartition(-block, wanted - 1, axis=1)[:, :wanted]
    similarities = np.take_along_axis(block, top, axis=1)
    last = similarities.min(axis=1, keepdims=True)
    tied = np.flatnonzero((block >= last).sum(axis=1) > wanted)
    for row in tied:
        top[row] = np.lexsort((position, -block[row]))[:wanted]
    similarities = np.take_along_axis(block, top, axis=1)
    ranked = np.lexsort((position[top], -similarities), axis=1)
    top = np.take_along_axis(top, ranked, axis=1)
    return top, np.minimum(np.take_along_axis(similarities, ranked, axis=1), 1.0)


def merge_neighbours(
    candidates: Iterable[tuple[Sequence[str], Sequence[float]]], k: int
) -> tuple[list[str], list[float]]:
    """One image's candidate lists (from each cell it joined) to its k best, no repeats."""
    best: dict[str, float] = {}
    for names, similarities in candidates:
        for name, similarity in zip(names, similarities, strict=True):
            if similarity > best.get(name, -np.inf):
                best[name] = similarity
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [name for name, _ in ranked], [similarity for _, similarity in ranked]


class Forest:
    """Union-find over hashable items, with path halving and union by size."""

    def __init__(self):
        self._parent: dict = {}
        self._size: dict = {}

    def find(self, item):
        parent = self._parent
        if item not in parent:
            parent[item] = item
            self._size[item] = 1
            return item
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a, b) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if self._size[root_a] < self._size[root_b]:
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a
        self._size[root_a] += self._size[root_b]

    def links(self) -> list[tuple]:
        """(item, its root) for every item that is not a root: the components as edges."""
        return [(item, root) for item in self._parent if (root := self.find(item)) != item]

    def components(self) -> list[list]:
        """Every component of two or more items."""
        members: dict = {}
        for item in self._parent:
            members.setdefault(self.find(item), []).append(item)
        return [items for items in members.values() if len(items) > 1]
