"""The similarity search on vectors with planted structure, against numpy brute force."""

from __future__ import annotations

import csv
import glob
import itertools
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from support import cosine_matrix, embeddings_table, read_neighbors

from pipeline.options import UsageError, parse_options
from pipeline.similarity import FindSimilar, SimilaritySettings
from pipeline.spill import SPILL_SUFFIX, GroupThroughFiles

DIMENSIONS = 96
RUN = "20260101T000000-aaaaaa"


def uri(index: int) -> str:
    return f"gs://bucket/planted/{index:05d}.jpg"


def index_of(name: str) -> int:
    """The index i of uri(i)."""
    return int(name.rsplit("/", 1)[1].split(".")[0])


def store(folder: Path, vectors: np.ndarray, sizes: np.ndarray | None = None) -> list[str]:
    """The vectors as the pipeline's Parquet shards (two files), URIs uri(0..n-1)."""
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    count = len(vectors)
    sizes = np.full((count, 2), 100) if sizes is None else sizes
    paths = []
    halves = np.array_split(np.arange(count), 2)
    for shard, rows in enumerate(halves):
        path = folder / "embeddings" / f"embeddings-{RUN}-{shard:05d}-of-00002.parquet"
        uris = [uri(i) for i in rows]
        vectors32 = vectors[rows].astype(np.float32)
        pq.write_table(embeddings_table(uris, vectors32, sizes[rows], RUN, "synthetic"), path)
        paths.append(str(path))
    return paths


def find_similar(folder: Path, files: list[str], settings: SimilaritySettings) -> None:
    with TestPipeline() as p:
        _ = (
            p
            | beam.Create(files)
            | FindSimilar(
                str(folder), str(folder), "parquet", "20260101T000001-bbbbbb", False, settings
            )
        )
    assert not glob.glob(str(folder / "_runs/*/similarity/*")), "spill files were left"


def read_groups(folder: Path) -> dict[int, dict[str, float]]:
    groups: dict[int, dict[str, float]] = {}
    for path in glob.glob(str(folder / "duplicates-*.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                groups.setdefault(int(row["group"]), {})[row["uri"]] = float(row["similarity"])
    return groups


def clustered(count: int, clusters: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    centres = generator.normal(size=(clusters, DIMENSIONS))
    labels = generator.integers(clusters, size=count)
    return centres[labels] + generator.normal(scale=0.8, size=(count, DIMENSIONS)) + 3.0


def exact_top(similarities: np.ndarray, k: int) -> list[list[int]]:
    scores = similarities.copy()
    np.fill_diagonal(scores, -np.inf)
    return [list(np.argsort(-row, kind="stable")[:k]) for row in scores]


def test_partitioned_search_recalls_brute_forces_neighbours(tmp_path):
    vectors = clustered(3000, clusters=30, seed=0)
    files = store(tmp_path, vectors)
    k = 10
    find_similar(tmp_path, files, SimilaritySettings(k, 0.0, 200, 3, seed=0))

    found = read_neighbors(tmp_path)
    similarities = cosine_matrix(vectors)
    exact = exact_top(similarities, k)
    assert set(found) == {uri(i) for i in range(len(vectors))}
    hits = 0
    for i, expected in enumerate(exact):
        names, values = found[uri(i)]
        assert len(names) == k and uri(i) not in names and len(set(names)) == k
        assert all(a >= b for a, b in itertools.pairwise(values))
        indices = [index_of(name) for name in names]
        np.testing.assert_allclose(values, similarities[i, indices], atol=2e-5)
        hits += len(set(expected) & set(indices))
    recall = hits / (k * len(vectors))
    assert recall >= 0.9, f"recall@{k} {recall:.3f}"
    assert not glob.glob(str(tmp_path / f"*{SPILL_SUFFIX}")), "working files were left"


def test_up_to_one_cell_the_search_is_exact(tmp_path):
    vectors = clustered(400, clusters=8, seed=1)
    files = store(tmp_path, vectors)
    find_similar(tmp_path, files, SimilaritySettings(7, 0.0, 500, 3, seed=0))

    found = read_neighbors(tmp_path)
    similarities = cosine_matrix(vectors)
    for i, expected in enumerate(exact_top(similarities, 7)):
        names, values = found[uri(i)]
        assert names == [uri(j) for j in expected]
        np.testing.assert_allclose(values, similarities[i, expected], atol=2e-5)


def planted_duplicates(seed: int):
    """Unrelated vectors plus planted groups whose pairs' similarities are known.

    Returns vectors, sizes and the planted groups as sets of indices. One group is a
    chain a-b-c where a and c are below the threshold but each link is above it.
    """
    generator = np.random.default_rng(seed)
    count = 1200
    vectors = generator.normal(size=(count, DIMENSIONS))
    sizes = np.full((count, 2), 100)
    groups = []
    index = 0
    for size in (2, 2, 3, 5, 8):
        members = list(range(index, index + size))
        base = vectors[members[0]]
        for member in members[1:]:
            vectors[member] = base + generator.normal(scale=0.12, size=DIMENSIONS)
        groups.append(set(members))
        index += size
    # The chain: b and c turn by one and two steps of angle t (cos t = 0.97) away from
    # a, in the plane of a and an orthogonal vector, so cos(a, c) = cos 2t = 0.88.
    a, b, c = index, index + 1, index + 2
    along = vectors[a] / np.linalg.norm(vectors[a])
    across = generator.normal(size=DIMENSIONS)
    across -= across @ along * along
    across /= np.linalg.norm(across)
    angle = np.arccos(0.97)
    for step, member in ((1, b), (2, c)):
        turned = np.cos(step * angle) * along + np.sin(step * angle) * across
        vectors[member] = turned * np.sqrt(DIMENSIONS)
    vectors[a] = along * np.sqrt(DIMENSIONS)
    groups.append({a, b, c})
    index += 3
    # Byte-identical copies: exactly the same vector three times.
    vectors[index + 1] = vectors[index]
    vectors[index + 2] = vectors[index]
    groups.append({index, index + 1, index + 2})
    # Sizes decide the representative: the largest image, then the smallest URI.
    sizes[5] = (300, 300)  # group {4, 5, 6}: 5 is the largest
    sizes[index + 2] = (50, 50)  # identical copies: index and index+1 tie, index wins
    return vectors, sizes, groups


def test_planted_groups_are_recovered_exactly(tmp_path):
    vectors, sizes, planted = planted_duplicates(seed=2)
    similarities = cosine_matrix(vectors)
    threshold = 0.95
    a = min(planted[-2])
    assert similarities[a, a + 1] >= threshold and similarities[a + 1, a + 2] >= threshold
    assert similarities[a, a + 2] < threshold, "the chain's ends must be below the threshold"
    files = store(tmp_path, vectors, sizes)
    find_similar(tmp_path, files, SimilaritySettings(3, threshold, 150, 3, seed=0))

    groups = read_groups(tmp_path)
    found = [{index_of(name) for name in members} for members in groups.values()]
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted))
    # No pair below the threshold joins two images unless a chain of pairs above does.
    for members in found:
        linked = similarities[np.ix_(sorted(members), sorted(members))] >= threshold - 1e-6
        reached = {0}
        for _ in members:
            reached |= {j for i in reached for j in np.flatnonzero(linked[i])}
        assert len(reached) == len(members)
    # Numbered largest first; the representative leads with similarity 1; the others'
    # similarities are numpy's, to the representative.
    assert [len(groups[n]) for n in sorted(groups)] == sorted(map(len, planted), reverse=True)
    by_members = {frozenset(index_of(u) for u in g): g for g in groups.values()}
    three = by_members[frozenset({4, 5, 6})]
    assert next(iter(three)) == uri(5) and three[uri(5)] == 1.0
    for member in (4, 6):
        assert three[uri(member)] == pytest.approx(similarities[5, member], abs=1e-5)
    copies = by_members[frozenset(planted[-1])]
    first = min(planted[-1])
    assert list(copies.items()) == [(uri(first), 1.0), (uri(first + 1), 1.0), (uri(first + 2), 1.0)]


def test_identical_vectors_group_at_a_threshold_of_one(tmp_path):
    vectors, sizes, planted = planted_duplicates(seed=3)
    files = store(tmp_path, vectors, sizes)
    find_similar(tmp_path, files, SimilaritySettings(0, 1.0, 150, 3, seed=0))

    groups = read_groups(tmp_path)
    found = [{index_of(u) for u in g} for g in groups.values()]
    assert found == [planted[-1]]
    assert not glob.glob(str(tmp_path / "neighbors-*.parquet"))


def test_grouping_through_files_equals_group_by_key(tmp_path):
    generator = np.random.default_rng(4)
    pairs = [(int(key), generator.normal(size=50)) for key in generator.integers(7, size=300)]
    expected = {}
    for key, value in pairs:
        expected.setdefault(key, []).append(value)

    def summed(keyed):
        key, values = keyed
        return key, len(values), round(float(np.sum(values)), 6)

    with TestPipeline() as p:
        grouped = (
            p
            | beam.Create(pairs)
            # A small spill size: every worker writes several files.
            | GroupThroughFiles(str(tmp_path / "_spill-test"), spill_bytes=4096)
            | beam.Map(summed)
        )
        assert_that(grouped, equal_to([summed(item) for item in expected.items()]))
    assert len(glob.glob(str(tmp_path / f"_spill-test-*{SPILL_SUFFIX}"))) > 3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--neighbors", "101"], "--neighbors must be between 0 (none) and 100"),
        (["--neighbors", "-1"], "--neighbors must be between 0 (none) and 100"),
        (["--duplicate_threshold", "1.5"], "--duplicate_threshold must be between 0"),
        (["--neighbors", "5", "--pooling", "none"], "need pooled embeddings"),
        (["--similarity_cell_size", "1"], "--similarity_cell_size must be at least 2"),
        (["--similarity_cells_per_image", "0"], "between 1 and 16"),
    ],
)
def test_similarity_flags_are_checked(flags, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options(["--input", "in.csv", "--output", "out", *flags])


def test_tiny_collections_are_still_answered(tmp_path):
    generator = np.random.default_rng(5)
    image = generator.normal(size=DIMENSIONS) + 3.0
    cases = {
        # Copies of one image are the whole collection: each equals the mean.
        "copies": (np.stack([image, image]), [[uri(1)], [uri(0)]], [[1.0], [1.0]], 1),
        # Two images: centred, they point in opposite directions.
        "two": (np.stack([image, -image]), [[uri(1)], [uri(0)]], [[-1.0], [-1.0]], 0),
        # One image: a row with no neighbours.
        "one": (image[None, :], [[]], [[]], 0),
    }
    for name, (vectors, names, similarities, groups) in cases.items():
        folder = tmp_path / name
        find_similar(folder, store(folder, vectors), SimilaritySettings(3, 1.0, 200, 3, seed=0))
        found = read_neighbors(folder)
        assert [found[uri(i)][0] for i in range(len(vectors))] == names, name
        for i, expected in enumerate(similarities):
            np.testing.assert_allclose(found[uri(i)][1], expected, atol=1e-6, err_msg=name)
        assert len(read_groups(folder)) == groups, name
