"""--compare_with: every image's nearest images in another output, against numpy brute force.

The reference centres both collections by the mean of their union and ranks each image's
candidates by similarity, ties by URI, as docs/similarity.md says the search does. The
search computes in float32 (one dot product of unit rows), the reference in float64:
they agree to about 1e-6 per similarity (a few float32 ulps of each of the d products
summed, d = 96 or 2048), so values are compared within 2e-5, as the neighbours' tests do,
and the names exactly (the planted data keep distinct candidates further apart than that).
"""

from __future__ import annotations

import base64
import glob
import io
import json
import re
import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support import (
    PHOTOS,
    altered_copies,
    embeddings_table,
    local_pipeline,
    parquet_embeddings,
    run_cli,
    summary,
    write_csv,
)
from test_cloud_storage import BUCKET, gcs  # noqa: F401 (gcs: the emulated bucket fixture)

from pipeline.options import UsageError, parse_options
from pipeline.outputs import RunTarget
from pipeline.similarity.compare import CompareSettings, CompareWith
from pipeline.similarity.neighbors import search_across, unit_rows

DIMENSIONS = 96
RUN = "20260101T000000-aaaaaa"  # the run the synthetic collections were stored by
COMPARE_RUN = "20260101T000001-bbbbbb"  # the run CompareWith writes as
TOLERANCE = 2e-5


def store(folder: Path, name: str, vectors: np.ndarray) -> list[str]:
    """The vectors as one Parquet shard of the pipeline's, URIs gs://NAME/00000.jpg...;
    returns the shard's path and the URIs."""
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    path = folder / "embeddings" / f"embeddings-{RUN}-00000-of-00001.parquet"
    uris = [f"gs://{name}/{index:05d}.jpg" for index in range(len(vectors))]
    sizes = np.full((len(vectors), 2), 100)
    table = embeddings_table(uris, vectors.astype(np.float32), sizes, RUN, "synthetic")
    pq.write_table(table, path)
    return [str(path), *uris]


def brute_force(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], k: int
) -> dict[str, list[tuple[str, float]]]:
    """Each of our URIs' k most similar of theirs: cosines of the rows centred by the
    union's mean, float64, ties in URI order."""
    our_uris, their_uris = sorted(ours), sorted(theirs)
    our_rows = np.stack([ours[uri] for uri in our_uris]).astype(np.float64)
    their_rows = np.stack([theirs[uri] for uri in their_uris]).astype(np.float64)
    mean = np.concatenate([our_rows, their_rows]).mean(axis=0)

    def unit(rows):
        centred = rows - mean
        return centred / np.linalg.norm(centred, axis=1, keepdims=True)

    similarities = unit(our_rows) @ unit(their_rows).T
    found = {}
    for row, uri in enumerate(our_uris):
        ranked = sorted(
            zip(their_uris, similarities[row], strict=True), key=lambda c: (-c[1], c[0])
        )
        found[uri] = [(name, float(value)) for name, value in ranked[:k]]
    return found


def reference_rows(nearest: dict[str, list[tuple[str, float]]], threshold: float) -> list:
    return [
        (uri, name, value)
        for uri in sorted(nearest)
        for name, value in nearest[uri]
        if value >= threshold
    ]


def read_matches(folder: Path) -> list[tuple[str, str, float]]:
    """matches-*.parquet's rows in file order; each image's rows together."""
    files = sorted(glob.glob(str(folder / "matches-*.parquet")))
    assert files, f"no matches file in {folder}"
    table = pq.read_table(files)
    assert table.schema.field("similarity").type == "float"
    return [(r["uri"], r["match_uri"], r["similarity"]) for r in table.to_pylist()]


def in_image_order(rows: list) -> list:
    """The rows with images in URI order, each image's rows kept in the order written."""
    by_uri: dict[str, list] = {}
    for row in rows:
        by_uri.setdefault(row[0], []).append(row)
    return [row for uri in sorted(by_uri) for row in by_uri[uri]]


def assert_rows_equal(found: list, expected: list) -> None:
    assert [(uri, name) for uri, name, _ in found] == [(uri, name) for uri, name, _ in expected]
    np.testing.assert_allclose(
        [value for *_, value in found], [value for *_, value in expected], atol=TOLERANCE
    )


def compare(tmp_path: Path, ours: np.ndarray, theirs: np.ndarray, **settings) -> tuple:
    """CompareWith on the two synthetic collections; (our URIs, their URIs, the staged
    folder, the description)."""
    our_folder, their_folder = tmp_path / "ours", tmp_path / "theirs"
    our_file, *our_uris = store(our_folder, "ours", ours)
    _, *their_uris = store(their_folder, "theirs", theirs)
    described = tmp_path / "described.json"
    compare_settings = CompareSettings(
        other=str(their_folder), other_format="parquet", other_runs=(RUN,), seed=0, **settings
    )
    with local_pipeline() as p:
        files = p | beam.Create([our_file])
        made = {"files": files} | CompareWith(
            RunTarget(str(our_folder), COMPARE_RUN), compare_settings
        )
        _ = made["description"] | beam.Map(lambda d: described.write_text(json.dumps(d)))
    stage = our_folder / "_runs" / COMPARE_RUN
    assert not glob.glob(str(stage / "compare" / "**" / "*.arrow"), recursive=True), "spill left"
    return our_uris, their_uris, stage, json.loads(described.read_text())


def clustered(count: int, centres: np.ndarray, generator, spread: float) -> np.ndarray:
    labels = generator.integers(len(centres), size=count)
    return centres[labels] + generator.normal(scale=spread, size=(count, DIMENSIONS))


def test_search_across_a_cell_is_brute_force_with_ties_in_uri_order():
    generator = np.random.default_rng(3)
    ours = unit_rows(generator.normal(size=(30, 16)), 0.0)
    theirs = unit_rows(generator.normal(size=(20, 16)), 0.0)
    theirs[7] = theirs[2]  # a tie: URI t02 comes before t07
    their_uris = [f"t{index:02d}" for index in range(20)][::-1]  # not in URI order
    found = search_across([f"o{i:02d}" for i in range(30)], ours, their_uris, theirs[::-1], 4)
    similarities = ours @ theirs.T
    for row, (uri, names, values) in enumerate(found):
        ranked = sorted(range(20), key=lambda j: (-similarities[row, j], f"t{j:02d}"))[:4]
        assert uri == f"o{row:02d}"
        assert names == [f"t{j:02d}" for j in ranked]
        np.testing.assert_allclose(values, similarities[row, ranked], atol=1e-6)
    assert search_across(["a", "b"], ours[:2], [], np.zeros((0, 16)), 3) == [
        ("a", [], []),
        ("b", [], []),
    ]


def test_with_every_image_in_every_cell_the_matches_are_brute_force(tmp_path):
    """Four cells, each image in all four: the partitioned search must find exactly what
    brute force finds, each candidate found in four cells merged once, ties by URI."""
    generator = np.random.default_rng(0)
    centres = generator.normal(size=(5, DIMENSIONS)) * 2 + 3
    ours = clustered(40, centres, generator, 0.8)
    theirs = clustered(60, centres, generator, 0.8)
    theirs[11] = theirs[10]  # identical: a tie for every image, broken by URI
    ours[5] = theirs[30]  # a byte-identical copy: similarity 1
    our_uris, their_uris, stage, described = compare(
        tmp_path, ours, theirs, threshold=0.0, matches=3, cell_size=25, cells_per_image=4
    )
    nearest = brute_force(
        dict(zip(our_uris, ours, strict=True)), dict(zip(their_uris, theirs, strict=True)), 3
    )
    # Threshold 0: the file holds every candidate with a positive similarity.
    expected = reference_rows(nearest, 0.0)
    assert_rows_equal(in_image_order(read_matches(stage)), expected)
    assert nearest[our_uris[5]][0] == (their_uris[30], pytest.approx(1.0, abs=1e-6))
    assert described["method"] == "ivf" and described["cells"] == 4
    assert described["cells_per_image"] == 4
    assert (described["images"], described["other_images"]) == (40, 60)
    assert described["matches"] == len(expected)
    assert described["images_matched"] == sum(1 for f in nearest.values() if f[0][1] >= 0)
    assert (
        described["images_matched"]
        + described["images_below_threshold"]
        + described["images_without_candidate"]
        == 40
    )


def test_separated_clusters_find_each_copy_in_its_own_cell(tmp_path):
    """Six clusters far apart, an image in its one nearest cell: each of our images is a
    copy of one of theirs with noise far below the clusters' spread, so its cell holds the
    copy's source and brute force's nearest is found. The threshold falls between the
    nearest similarities of the copies and of the others, so images on both sides of it
    are counted."""
    generator = np.random.default_rng(1)
    centres = generator.normal(size=(6, DIMENSIONS)) * 2
    theirs = clustered(120, centres, generator, 1.0)
    sources = generator.choice(120, size=30, replace=False)
    ours = theirs[sources] + generator.normal(scale=0.05, size=(30, DIMENSIONS))
    ours[:5] = clustered(5, centres, generator, 1.0)  # not copies: their nearest is weaker
    our_uris, their_uris = (
        [f"gs://ours/{i:05d}.jpg" for i in range(30)],
        [f"gs://theirs/{i:05d}.jpg" for i in range(120)],
    )
    nearest = brute_force(
        dict(zip(our_uris, ours, strict=True)), dict(zip(their_uris, theirs, strict=True)), 1
    )
    # Between the copies' nearest similarities and the others': far from both.
    others = max(found[0][1] for uri, found in nearest.items() if uri in our_uris[:5])
    copied = min(found[0][1] for uri, found in nearest.items() if uri not in our_uris[:5])
    assert copied - others > 0.1
    threshold = (others + copied) / 2
    _, _, stage, described = compare(
        tmp_path, ours, theirs, threshold=threshold, matches=1, cell_size=25, cells_per_image=1
    )
    copies = {our_uris[i]: nearest[our_uris[i]] for i in range(5, 30)}
    assert all(found[0][0] == their_uris[sources[i + 5]] for i, found in enumerate(copies.values()))
    assert_rows_equal(in_image_order(read_matches(stage)), reference_rows(nearest, threshold))
    assert described["method"] == "ivf" and described["cells"] == 6
    matched = sum(1 for found in nearest.values() if found[0][1] >= threshold)
    assert described["images_matched"] == described["matches"] == matched
    assert described["images_below_threshold"] == 30 - matched
    assert described["images_without_candidate"] == 0
    assert len(described["nearest_similarity_deciles"]) == 11


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--compare_with", "elsewhere"], "--compare_with needs a threshold"),
        (["--compare_threshold", "0.9"], "--compare_threshold needs --compare_with"),
        (["--compare_with", "out", "--compare_threshold", "0.9"], "is the --output itself"),
        (["--compare_with", "x", "--compare_threshold", "1.5"], "--compare_threshold must be"),
        (
            ["--compare_with", "x", "--duplicate_threshold", "0.9", "--compare_matches", "0"],
            "--compare_matches",
        ),
    ],
)
def test_compare_flags_are_checked(flags, message):
    with pytest.raises(UsageError, match=message):
        parse_options(["--input", "in.csv", "--output", "out", *flags])


def test_the_threshold_is_compare_threshold_else_duplicate_threshold():
    from pipeline.options import EmbeddingOptions, compare_threshold

    def threshold(*flags):
        argv = ["--input", "in.csv", "--output", "out", "--compare_with", "x", *flags]
        return compare_threshold(parse_options(argv).view_as(EmbeddingOptions))

    assert threshold("--duplicate_threshold", "0.9") == 0.9
    assert threshold("--duplicate_threshold", "0.9", "--compare_threshold", "0.97") == 0.97


# --- Two outputs of real runs with known overlap -----------------------------------------

PHOTO_NAMES = ("astronaut.png", "brick.png", "chelsea.png", "coffee.png", "retina.jpg")
K = 2
# With random weights a threshold means little (brute force applies the same one); at
# 0.8 some of this run's images match and some do not (nearest similarities measured:
# 0.61, 0.77, 0.83, 0.997, 0.9997 and 1).
THRESHOLD = 0.8


def write_sets(root: Path) -> tuple[list[str], list[str]]:
    """The other output's images (four photographs and a crop of a fifth) and this run's
    (a re-encode, a crop and a byte-identical copy of three of them, the fifth whole,
    and two photographs the other output lacks)."""
    copies = root / "copies"
    copies.mkdir()
    altered = {}
    for name in PHOTO_NAMES:
        with Image.open(PHOTOS / name) as image:
            image.load()
        for suffix, (copy, params) in altered_copies(image).items():
            if suffix.split(".")[0] in ("jpeg30", "crop"):
                path = copies / f"{Path(name).stem}-{suffix}"
                copy.save(path, **params)
                altered[(name, suffix.split(".")[0])] = str(path)
    identical = copies / "copy-of-chelsea.png"
    shutil.copyfile(PHOTOS / "chelsea.png", identical)
    other = [str(PHOTOS / name) for name in PHOTO_NAMES[:4]] + [altered[("retina.jpg", "crop")]]
    this = [
        altered[("astronaut.png", "jpeg30")],
        altered[("brick.png", "crop")],
        str(identical),
        str(PHOTOS / "retina.jpg"),
        str(PHOTOS / "rocket.jpg"),
        str(PHOTOS / "hubble_deep_field.jpg"),
    ]
    return other, this


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The other output, then a run compared with it (with --map for the report)."""
    root = tmp_path_factory.mktemp("compared")
    other_uris, this_uris = write_sets(root)
    other = root / "evaluation"
    result = run_cli(
        "--input", str(write_csv(root / "other.csv", other_uris)),
        "--output", str(other),
        "--weights", "random",
        "--map",  # its report's thumbnails are shown beside the matches
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = root / "out"
    result = run_cli(
        "--input", str(write_csv(root / "this.csv", this_uris)),
        "--output", str(output),
        "--weights", "random",
        "--compare_with", str(other),
        "--compare_threshold", str(THRESHOLD),
        "--compare_matches", str(K),
        "--map",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, other, output


@pytest.mark.pipeline_run
def test_matches_are_brute_force_over_both_outputs_and_the_counts_reconcile(compared):
    _, other, output = compared
    ours, theirs = parquet_embeddings(output), parquet_embeddings(other)
    nearest = brute_force(ours, theirs, K)
    expected = reference_rows(nearest, THRESHOLD)
    found = read_matches(output)
    # A pair within TOLERANCE of the threshold is on it: the stored embeddings (bfloat16
    # where the CPU has AMX) and float32 against float64 decide its side, so it may be
    # written or not. Every other pair is as numpy says.
    on_threshold = {
        (uri, name)
        for uri, ranked in nearest.items()
        for name, value in ranked
        if abs(value - THRESHOLD) <= TOLERANCE
    }

    def settled(rows: list) -> list:
        return [row for row in rows if row[:2] not in on_threshold]

    assert_rows_equal(settled(in_image_order(found)), settled(expected))
    # The byte-identical copy matches its photograph at similarity 1, first.
    copy = next(uri for uri in ours if uri.endswith("copy-of-chelsea.png"))
    assert nearest[copy][0] == (str(PHOTOS / "chelsea.png"), pytest.approx(1.0, abs=1e-5))
    described = summary(output)["compared"]
    assert described["with"] == str(other)
    assert (described["images"], described["other_images"]) == (len(ours), len(theirs))
    assert described["threshold"] == THRESHOLD and described["matches_per_image"] == K
    assert described["matches"] == len(found)
    assert described["images_matched"] == len({uri for uri, _, _ in found})
    assert 0 < described["images_matched"] < len(ours)
    assert described["images_matched"] + described["images_below_threshold"] + described[
        "images_without_candidate"
    ] == len(ours)
    deciles = described["nearest_similarity_deciles"]
    assert deciles[0] == pytest.approx(min(f[0][1] for f in nearest.values()), abs=TOLERANCE)
    assert deciles[-1] == pytest.approx(max(f[0][1] for f in nearest.values()), abs=TOLERANCE)
    assert summary(output)["outputs"]["matches"].endswith("matches-*.parquet")


@pytest.mark.pipeline_run
def test_the_report_shows_the_matched_pairs_with_both_thumbnails(compared):
    _, other, output = compared
    html = (output / "report.html").read_text()
    section = html[html.index(f'<h2 id="matches">Matches in {other}</h2>') :]
    section = section[: section.find("<h2", 1)]
    pairs = re.findall(
        r'<div class="band-pair match">(.*?)</div>(?=<div class="band-pair|$)', section
    )
    found = read_matches(output)
    assert len(pairs) == len(found)  # fewer than the 24 shown
    for pair, (uri, match_uri, similarity) in zip(
        pairs, sorted(found, key=lambda r: (-r[2], r[0], r[1])), strict=True
    ):
        figures = re.findall(
            r'<figure title="([^"]*)"><img src="data:image/jpeg;base64,([^"]+)"', pair
        )
        # This run's thumbnail, and the other output's from its report's sample.
        assert [title for title, _ in figures] == [uri, match_uri]
        for _, encoded in figures:
            with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
                assert max(thumbnail.size) == 128
        assert f"{similarity:.4f}" in pair


def fabricated(other: Path, folder: Path, **changes) -> Path:
    """A copy of the other output whose summary.json says changes."""
    shutil.copytree(other, folder)
    recorded = summary(folder)
    recorded.update(changes)
    (folder / "summary.json").write_text(json.dumps(recorded))
    return folder


@pytest.mark.pipeline_run
def test_an_output_made_otherwise_is_refused_naming_each_difference(compared, tmp_path):
    root, other, _ = compared
    ours = summary(other)  # made as the refused runs make theirs
    otherwise = {
        "model": "efficientnet_b0",
        "weights": "imagenet",
        "pooling": "max",
        "resize": "center_crop 256 -> 224",
        "precision": "bfloat16",
        "embedding_shape": [1280],
    }
    made_otherwise = fabricated(other, tmp_path / "otherwise", **otherwise)
    empty = tmp_path / "empty"
    empty.mkdir()
    no_records = fabricated(other, tmp_path / "no-records")
    shutil.rmtree(no_records / "embeddings")
    for compared_with, expected in (
        (
            made_otherwise,
            [f"{key} {value} there, {ours[key]} here" for key, value in otherwise.items()],
        ),
        (empty, ["holds no summary.json"]),
        (no_records, ["holds no embeddings"]),
    ):
        output = tmp_path / f"out-{compared_with.name}"
        result = run_cli(
            "--input", str(root / "this.csv"),
            "--output", str(output),
            "--weights", "random",
            "--compare_with", str(compared_with),
            "--compare_threshold", "0.9",
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].count(f"--compare_with {compared_with}") == 1
        for part in expected:
            assert part in lines[0]
        assert not (output / "summary.json").exists()


@pytest.mark.pipeline_run
def test_an_output_on_cloud_storage_is_compared_as_a_local_one(compared, gcs, tmp_path):  # noqa: F811
    """The other output copied to the emulated bucket: the same matches, read over gs://."""
    root, other, output = compared
    for path in other.rglob("*"):
        if path.is_file():
            gcs["bucket"].blob(f"evaluation/{path.relative_to(other)}").upload_from_filename(path)
    on_gcs = f"gs://{BUCKET}/evaluation"
    local = tmp_path / "out"
    result = run_cli(
        "--input", str(root / "this.csv"),
        "--output", str(local),
        "--weights", "random",
        "--compare_with", on_gcs,
        "--compare_threshold", str(THRESHOLD),
        "--compare_matches", str(K),
        env=gcs["env"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert_rows_equal(in_image_order(read_matches(local)), in_image_order(read_matches(output)))
    described = summary(local)["compared"]
    assert described["with"] == on_gcs
    assert described["matches"] == summary(output)["compared"]["matches"]
