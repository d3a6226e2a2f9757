"""The output folders as tools read them: the Parquet folder (pyarrow, pandas, the
DuckDB query of docs/outputs.md, "Files and formats"), the input's kept columns in
every file, Vector Search files on the local filesystem, and --skip_existing over the
earlier layout."""

from __future__ import annotations

import csv
import glob
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import PHOTO_PATHS, REPO, dead_letter, npy_index, run_cli, summary
from vector_format import check_vector_search_folder

from pipeline.options import UsageError
from pipeline.outputs.naming import MAX_DATAPOINT_ID_BYTES, datapoint_id
from pipeline.run.preflight import check_earlier_outputs

pytestmark = pytest.mark.pipeline_run

LABELS = ["a, b", 'say "cheese"', "Zürich — 東京 🚀", "  padded  ", ""]


def catalogue(tmp_path: Path, paths: list[str], name: str = "catalogue.csv") -> Path:
    """A CSV: uri, label (awkward values), sku; a header, as --keep_columns needs."""
    path = tmp_path / name
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label", "sku"])
        for index, uri in enumerate(paths):
            writer.writerow([uri, LABELS[index % len(LABELS)], f"SKU-{index:03d}"])
    return path


def expected_columns(csv_path: Path) -> dict[str, tuple[str, str]]:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return {row["uri"]: (row["label"], row["sku"]) for row in csv.DictReader(handle)}


def run(csv_path: Path, output: Path, *extra: str):
    return run_cli(
        "--input", str(csv_path), "--output", str(output), "--weights", "random",
        "--keep_columns", "label,sku", *extra,
    )  # fmt: skip


def vector_folder(folder: Path) -> dict[str, bytes]:
    return {
        os.path.relpath(path, folder.parent).replace(os.sep, "/"): Path(path).read_bytes()
        for path in glob.glob(str(folder / "**"), recursive=True)
        if os.path.isfile(path)
    }


@pytest.fixture(scope="module")
def long_uri_photo(tmp_path_factory) -> str:
    """A photograph whose path is longer than a Vector Search id may be."""
    folder = tmp_path_factory.mktemp("long") / ("a-very-long-folder-name-" * 6)
    folder.mkdir()
    path = folder / "astronaut.png"
    shutil.copy(PHOTO_PATHS[0], path)
    assert len(str(path).encode()) > MAX_DATAPOINT_ID_BYTES
    return str(path)


def test_parquet_folder_is_one_dataset_with_the_kept_columns_and_vector_search_files(
    tmp_path, long_uri_photo
):
    csv_path = catalogue(tmp_path, [*PHOTO_PATHS[1:8], long_uri_photo])
    output, vectors = tmp_path / "out", tmp_path / "vector-search"
    result = run(
        csv_path, output, "--vector_search_output", str(vectors),
        "--vector_search_crowding_column", "sku",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    # The folder alone is the dataset: pyarrow reads it whole.
    table = pq.read_table(output / "embeddings")
    assert table.num_rows == 8
    rows = {row["uri"]: row for row in table.to_pylist()}
    for uri, (label, sku) in expected_columns(csv_path).items():
        assert (rows[uri]["label"], rows[uri]["sku"]) == (label, sku)
        assert rows[uri]["datapoint_id"] == datapoint_id(uri)
    assert rows[long_uri_photo]["datapoint_id"] == datapoint_id(long_uri_photo)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", datapoint_id(long_uri_photo))

    points = check_vector_search_folder(vector_folder(vectors), "vector-search", 2048)
    assert sorted(points) == sorted(row["datapoint_id"] for row in rows.values())
    for row in rows.values():
        point = points[row["datapoint_id"]]
        assert np.array_equal(np.array(point["embedding"], np.float32), row["embedding"])
        assert point["restricts"] == [
            {"namespace": "label", "allow": [row["label"]]},
            {"namespace": "sku", "allow": [row["sku"]]},
        ]
        assert point["crowding_tag"] == row["sku"]
    assert summary(output)["vector_search"] == {
        "folder": str(vectors),
        "files": len(glob.glob(str(vectors / "*.json"))),
        "datapoints": 8,
    }


def readme_sql(containing: str) -> str:
    """The one sql block of the README or a docs/ page with the given text."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    texts = [page.read_text() for page in pages]
    blocks = [b for text in texts for b in re.findall(r"```sql\n(.*?)```", text, re.DOTALL)]
    blocks = [block for block in blocks if containing in block]
    assert len(blocks) == 1, f"expected one README or docs/ sql block with {containing!r}"
    return blocks[0]


def test_the_readme_duckdb_query_finds_numpys_nearest_images(tmp_path):
    import duckdb

    output = tmp_path / "demo"
    result = run_cli(
        "--input", "tests/data/photos.csv", "--output", str(output), "--weights", "random"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    query = readme_sql("list_cosine_similarity").replace("out/demo", str(output))
    found = duckdb.sql(query).fetchall()

    table = pq.read_table(output / "embeddings")
    uris = table.column("uri").to_pylist()
    matrix = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(uris), -1)
    unit = matrix.astype(np.float64) / np.linalg.norm(matrix, axis=1, keepdims=True)
    target = uris.index("tests/data/photos/astronaut.png")
    similarity = unit @ unit[target]
    order = [i for i in np.argsort(-similarity) if i != target][:10]
    assert [uri for uri, _ in found] == [uris[i] for i in order]
    assert np.allclose([s for _, s in found], similarity[order], atol=1e-5)


def test_vector_search_folder_holds_one_runs_datapoints(tmp_path):
    first_csv = catalogue(tmp_path, PHOTO_PATHS[:4], "first.csv")
    all_csv = catalogue(tmp_path, PHOTO_PATHS[:7], "all.csv")
    output, vectors = tmp_path / "out", tmp_path / "vectors"
    assert run(first_csv, output, "--vector_search_output", str(vectors)).returncode == 0
    first = check_vector_search_folder(vector_folder(vectors), "vectors", 2048)
    assert sorted(first) == sorted(PHOTO_PATHS[:4])

    # --skip_existing: only the new images, ready for an incremental index update.
    result = run(all_csv, output, "--vector_search_output", str(vectors), "--skip_existing")
    assert result.returncode == 0, result.stderr[-3000:]
    update = check_vector_search_folder(vector_folder(vectors), "vectors", 2048)
    assert sorted(update) == sorted(PHOTO_PATHS[4:7])
    assert pq.read_table(output / "embeddings").num_rows == 7

    # A re-run replaces the folder's files with every datapoint.
    assert run(all_csv, output, "--vector_search_output", str(vectors)).returncode == 0
    full = check_vector_search_folder(vector_folder(vectors), "vectors", 2048)
    assert sorted(full) == sorted(PHOTO_PATHS[:7])

    # Files the pipeline did not write would be read by Vector Search too: refused.
    (vectors / "notes.txt").write_text("mine")
    refused = run(all_csv, output, "--vector_search_output", str(vectors))
    assert refused.returncode == 2
    assert "notes.txt" in refused.stderr and "did not write" in refused.stderr


def test_the_npy_index_keeps_the_columns_and_bad_rows_are_dead_lettered(tmp_path):
    csv_path = catalogue(tmp_path, PHOTO_PATHS[:5])
    columns = expected_columns(csv_path)
    with open(csv_path, "a", encoding="utf-8") as handle:
        handle.write(f"{PHOTO_PATHS[0]},another label,SKU-000\n")  # the same URI, disagreeing
        handle.write(f"{PHOTO_PATHS[6]},unquoted, comma,SKU-006\n")  # four fields, not three
    output = tmp_path / "out"
    result = run(csv_path, output, "--output_format", "npy", "--max_failure_fraction", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    index = {row["uri"]: row for row in npy_index(output)}
    assert list(next(iter(index.values()))) == [
        "uri", "file", "width", "height", "datapoint_id", "label", "sku",
    ]  # fmt: skip
    # The first row of a URI is kept here because its values sort first.
    for uri, (label, sku) in columns.items():
        assert (index[uri]["label"], index[uri]["sku"]) == (label, sku)
    failures = {(f["uri"], f["error_type"]) for f in dead_letter(output)}
    assert failures == {
        (PHOTO_PATHS[0], "ConflictingDuplicate"),
        (PHOTO_PATHS[6], "MalformedRow"),
    }
    counts = summary(output)
    assert (counts["rows_read"], counts["embedded"], counts["failed"]) == (7, 5, 2)
    assert counts["reconciled"] is True


def test_column_mistakes_stop_the_run_before_any_work(tmp_path):
    csv_path = catalogue(tmp_path, PHOTO_PATHS[:2])
    photos_glob = str(Path(PHOTO_PATHS[0]).parent / "*.png")
    vectors = str(tmp_path / "v")
    cases = [
        (["--keep_columns", "label,colour"], "colour not in the header"),
        (["--keep_columns", "label", "--input", photos_glob], "is a glob of images"),
        (["--keep_columns", "uri"], "would clash with the output's own column 'uri'"),
        (["--vector_search_output", str(tmp_path / "never" / "vs")], "neither --output nor"),
        (
            ["--keep_columns", "label", "--vector_search_crowding_column", "sku",
             "--vector_search_output", vectors],
            "must also be one of --keep_columns",
        ),
    ]  # fmt: skip
    for extra, message in cases:
        output = tmp_path / "never"
        args = ["--input", str(csv_path), "--output", str(output), "--weights", "random"]
        result = run_cli(*args, *extra)
        assert result.returncode == 2, extra
        assert message in result.stderr, (extra, result.stderr)
        assert not (output / "embeddings").exists()


def test_skip_existing_reads_the_earlier_layout_and_a_rerun_moves_past_it(tmp_path):
    first_csv = catalogue(tmp_path, PHOTO_PATHS[:4], "first.csv")
    all_csv = catalogue(tmp_path, PHOTO_PATHS[:6], "all.csv")
    output = tmp_path / "out"
    assert run(first_csv, output, "--keep_columns", "").returncode == 0
    # The earlier layout: shards beside the dead letter and the summary, with only
    # uri, embedding, width and height.
    [shard] = glob.glob(str(output / "embeddings" / "*.parquet"))
    legacy = output / os.path.basename(shard)
    pq.write_table(pq.read_table(shard, columns=["uri", "embedding", "width", "height"]), legacy)
    shutil.rmtree(output / "embeddings")
    with pytest.raises(UsageError, match="holds shards in the earlier layout"):
        check_earlier_outputs(str(output), "parquet", (), "my-project.images.embeddings", {})

    result = run(all_csv, output, "--keep_columns", "", "--skip_existing", "--neighbors", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = summary(output)
    assert (counts["skipped_existing"], counts["embedded"]) == (4, 2)
    assert counts["similarity"]["images"] == 6  # the earlier shard is searched too
    assert legacy.exists()

    different = run(all_csv, output, "--skip_existing", "--keep_columns", "sku")
    assert different.returncode == 2
    assert "keep the columns [], this run would keep ['sku']" in different.stderr

    assert run(all_csv, output).returncode == 0
    assert not legacy.exists()
    assert pq.read_table(output / "embeddings").num_rows == 6
