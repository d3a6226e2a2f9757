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
from apache_beam.testing.util import assert_that, equal_to
from support import cosine_matrix, embeddings_table, local_pipeline, read_neighbors

from pipeline.options import UsageError, parse_options
from pipeline.outputs import RunTarget
from pipeline.similarity.find import FindSimilar, SimilaritySettings
from pipeline.similarity.spill import SPILL_SUFFIX, GroupThroughFiles

DIMENSIONS = 96
RUN = "20260101T000000-aaaaaa"


SIMILARITY_RUN = "20260101T000001-bbbbbb"  # the run FindSimilar writes as


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
    find_similar_in_each({folder: files}, settings)


def find_similar_in_each(collections: dict[Path, list[str]], settings: SimilaritySettings):
    """FindSimilar on each collection, into its own folder; one pipeline runs them all, as
    each pipeline pays a few seconds for the near-duplicate rounds' hundreds of steps."""
    with local_pipeline() as p:
        for folder, files in collections.items():
            files_read = p | f"Files {folder.name}" >> beam.Create(files)
            target = RunTarget(str(folder), SIMILARITY_RUN)
            _ = {"files": files_read} | f"Find similar {folder.name}" >> FindSimilar(
                target, settings
            )
    for folder in collections:
        assert not glob.glob(str(folder / "_runs/*/similarity/*")), "spill files were left"


def staged(folder: Path) -> Path:
    """The folder FindSimilar's run writes its files to."""
    return folder / "_runs" / SIMILARITY_RUN


def read_groups(folder: Path) -> dict[int, dict[str, float]]:
    groups: dict[int, dict[str, float]] = {}
    for path in glob.glob(str(staged(folder) / "duplicates-*.csv")):
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


# slow: a FindSimilar run over thousands of vectors with a brute-force reference (4-5 s).
@pytest.mark.slow
def test_partitioned_search_recalls_brute_forces_neighbours(tmp_path):
    vectors = clustered(3000, clusters=30, seed=0)
    files = store(tmp_path, vectors)
    k = 10
    find_similar(tmp_path, files, SimilaritySettings(k, 0.0, 200, 3, seed=0))

    found = read_neighbors(staged(tmp_path))
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

    found = read_neighbors(staged(tmp_path))
    similarities = cosine_matrix(vectors)
    for i, expected in enumerate(exact_top(similarities, 7)):
        names, values = found[uri(i)]
        assert names == [uri(j) for j in expected]
        np.testing.assert_allclose(values, similarities[i, expected], atol=2e-5)


def turned(along: np.ndarray, across: np.ndarray, steps: float, cosine: float) -> np.ndarray:
    """A vector `steps` turns of angle arccos(cosine) from `along` towards `across`."""
    angle = steps * np.arccos(cosine)
    return (np.cos(angle) * along + np.sin(angle) * across) * np.sqrt(DIMENSIONS)


def plane(generator, vectors: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A unit vector along vectors[index] and a unit vector orthogonal to it."""
    along = vectors[index] / np.linalg.norm(vectors[index])
    across = generator.normal(size=DIMENSIONS)
    across -= across @ along * along
    return along, across / np.linalg.norm(across)


def planted_duplicates(seed: int):
    """Unrelated vectors plus planted near-duplicates whose similarities are known.

    Returns vectors, sizes and the planted sets of indices by name: tight groups of 2, 2,
    3, 5 and 8; two chains a-b-c (cos(a, b) = cos(b, c) = 0.97, cos(a, c) = 0.88), one
    with b the largest image, one with a; three identical vectors; and two clusters of 5
    and 8 joined by one pair at 0.97 whose other members are at most 0.88 across.
    """
    generator = np.random.default_rng(seed)
    count = 1200
    vectors = generator.normal(size=(count, DIMENSIONS))
    sizes = np.full((count, 2), 100)
    planted: dict[str, set[int]] = {}
    index = 0
    for size in (2, 2, 3, 5, 8):
        members = list(range(index, index + size))
        base = vectors[members[0]]
        for member in members[1:]:
            vectors[member] = base + generator.normal(scale=0.12, size=DIMENSIONS)
        planted[f"tight {size} at {index}"] = set(members)
        index += size
    for name in ("chain, b largest", "chain, a largest"):
        a, b, c = index, index + 1, index + 2
        along, across = plane(generator, vectors, a)
        for step, member in ((0, a), (1, b), (2, c)):
            vectors[member] = turned(along, across, step, 0.97)
        sizes[b if name == "chain, b largest" else a] = (200, 200)
        planted[name] = {a, b, c}
        index += 3
    # Byte-identical copies: exactly the same vector three times.
    vectors[index + 1] = vectors[index]
    vectors[index + 2] = vectors[index]
    planted["identical"] = {index, index + 1, index + 2}
    index += 3
    # The bridge: p, x, y, q one turn apart; p's cluster is p, x and three copies of p
    # slightly moved, q's is q, y and six; p and q are their clusters' largest images.
    along, across = plane(generator, vectors, index)
    p, x, y, q = index, index + 1, index + 2, index + 3
    for step, member in ((0, p), (1, x), (2, y), (3, q)):
        vectors[member] = turned(along, across, step, 0.97)
    sizes[p], sizes[q] = (400, 400), (300, 300)
    index += 4
    clusters = {"cluster p": {p, x}, "cluster q": {q, y}}
    for name, centre, extra in (("cluster p", p, 3), ("cluster q", q, 6)):
        for member in range(index, index + extra):
            vectors[member] = vectors[centre] + generator.normal(scale=0.03, size=DIMENSIONS)
            clusters[name].add(member)
        index += extra
    planted.update(clusters)
    # Sizes decide the representative: the largest image, then the smallest URI.
    sizes[5] = (300, 300)  # group {4, 5, 6}: 5 is the largest
    first = min(planted["identical"])
    sizes[first + 2] = (50, 50)  # identical copies: first and first+1 tie, first wins
    return vectors, sizes, planted


def reference_groups(
    similarities: np.ndarray, sizes: np.ndarray, threshold: float
) -> list[list[int]]:
    """numpy's greedy walk over every image: representative first, then by similarity."""
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i].prod()), uri(i)))
    grouped: set[int] = set()
    groups = []
    for i in order:
        if i in grouped:
            continue
        near = [
            j
            for j in np.flatnonzero(similarities[i] >= threshold - 1e-6)
            if j != i and j not in grouped
        ]
        if near:
            near.sort(key=lambda j: (-similarities[i, j], uri(j)))
            grouped.update([i, *near])
            groups.append([i, *near])
    return groups


def read_rows(folder: Path) -> list[dict[str, str]]:
    (path,) = glob.glob(str(staged(folder) / "duplicates-*.csv"))
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["group", "uri", "similarity", "component"]
        return list(reader)


def test_every_member_is_within_the_threshold_of_its_representative(tmp_path):
    vectors, sizes, planted = planted_duplicates(seed=2)
    similarities = cosine_matrix(vectors)
    threshold = 0.95
    for name in ("chain, b largest", "chain, a largest"):
        a, b, c = sorted(planted[name])
        assert similarities[a, b] >= threshold and similarities[b, c] >= threshold
        assert similarities[a, c] < threshold, "the chain's ends must be below the threshold"
    p, x, y, q = sorted(planted["cluster p"])[:2] + sorted(planted["cluster q"])[:2]
    assert similarities[x, y] >= threshold
    for i in planted["cluster p"]:
        for j in planted["cluster q"]:
            assert (i, j) == (x, y) or similarities[i, j] < threshold, (i, j)
    files = store(tmp_path, vectors, sizes)
    find_similar(tmp_path, files, SimilaritySettings(3, threshold, 150, 3, seed=0))

    rows = read_rows(tmp_path)
    groups: dict[int, list[tuple[int, float]]] = {}
    components: dict[int, set[int]] = {}
    for row in rows:
        groups.setdefault(int(row["group"]), []).append(
            (index_of(row["uri"]), float(row["similarity"]))
        )
        components.setdefault(int(row["group"]), set()).add(int(row["component"]))
    # The same groups as numpy's walk over every pair, in the same order, representative
    # first; every member within the threshold of it, at numpy's similarity.
    expected = reference_groups(similarities, sizes, threshold)
    expected.sort(key=lambda members: (-len(members), uri(members[0])))
    assert [[i for i, _ in groups[n]] for n in sorted(groups)] == expected
    assert sorted(groups) == list(range(1, len(groups) + 1))
    for members in groups.values():
        representative = members[0][0]
        assert members[0][1] == 1.0
        for member, similarity in members[1:]:
            assert similarity == pytest.approx(similarities[representative, member], abs=1e-5)
            assert similarity >= threshold - 1e-6
    by_members = {frozenset(i for i, _ in members): n for n, members in groups.items()}
    # The chains: the larger of a and b represents; c joins only when within T of it.
    a, b, c = sorted(planted["chain, b largest"])
    assert groups[by_members[frozenset({a, b, c})]][0][0] == b
    a, b, c = sorted(planted["chain, a largest"])
    assert groups[by_members[frozenset({a, b})]][0][0] == a
    assert uri(c) not in {row["uri"] for row in rows}
    # Tight groups and identical vectors are groups of their own.
    for name, members in planted.items():
        if name.startswith("tight") or name == "identical":
            assert frozenset(members) in by_members, name
    first = min(planted["identical"])
    assert groups[by_members[frozenset(planted["identical"])]] == [
        (first, 1.0), (first + 1, 1.0), (first + 2, 1.0)
    ]  # fmt: skip
    # The bridged clusters: two groups of 5 and 8, in one component, numbered after the
    # smaller of their two group numbers.
    group_p = by_members[frozenset(planted["cluster p"])]
    group_q = by_members[frozenset(planted["cluster q"])]
    assert groups[group_p][0][0] == p and groups[group_q][0][0] == q
    assert components[group_p] == components[group_q] == {min(group_p, group_q)}
    # Every other group is a component of its own, numbered after it.
    for number, component in components.items():
        if number not in (group_p, group_q):
            assert component == {number}


def test_identical_vectors_group_at_a_threshold_of_one(tmp_path):
    vectors, sizes, planted = planted_duplicates(seed=3)
    files = store(tmp_path, vectors, sizes)
    find_similar(tmp_path, files, SimilaritySettings(0, 1.0, 150, 3, seed=0))

    groups = read_groups(tmp_path)
    found = [{index_of(u) for u in g} for g in groups.values()]
    assert found == [planted["identical"]]
    assert glob.glob(str(staged(tmp_path) / "duplicates-*.csv"))
    assert not glob.glob(str(staged(tmp_path) / "neighbors-*.parquet"))


def test_grouping_through_files_equals_group_by_key(tmp_path):
    generator = np.random.default_rng(4)
    pairs = [(int(key), generator.normal(size=50)) for key in generator.integers(7, size=300)]
    expected = {}
    for key, value in pairs:
        expected.setdefault(key, []).append(value)

    def summed(keyed):
        key, values = keyed
        return key, len(values), round(float(np.sum(values)), 6)

    with local_pipeline() as p:
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


# slow: three FindSimilar runs with every near-duplicate round (about 10 s idle).
@pytest.mark.slow
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
    collections = {tmp_path / name: store(tmp_path / name, case[0]) for name, case in cases.items()}
    find_similar_in_each(collections, SimilaritySettings(3, 1.0, 200, 3, seed=0))
    for name, (vectors, names, similarities, groups) in cases.items():
        folder = tmp_path / name
        found = read_neighbors(staged(folder))
        assert [found[uri(i)][0] for i in range(len(vectors))] == names, name
        for i, expected in enumerate(similarities):
            np.testing.assert_allclose(found[uri(i)][1], expected, atol=1e-6, err_msg=name)
        assert len(read_groups(folder)) == groups, name
