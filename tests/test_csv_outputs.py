"""Every CSV the pipeline writes quotes line breaks, and every reader, the pipeline's own
included, gets each record back whole: a local file name holding a newline survives."""

from __future__ import annotations

import csv
import glob
import shutil
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.csv as pacsv
import pytest
from apache_beam.testing.util import assert_that, equal_to
from support import PHOTOS, local_pipeline, npy_index, read_parquet, run_cli, summary

from pipeline.common import Failure, ImageKey, csv_line, csv_records, unwritable
from pipeline.outputs.columns import RowColumns
from pipeline.outputs.sinks import WriteNpy, WriteParquet, parquet_schema

duckdb = pytest.importorskip("duckdb")

# Each a field that a reader would split or misread if it went unquoted.
AWKWARD = [
    "\r", "\n", "\r\n", "a\r\nb", "two\nlines.jpg", '"', 'say "hi"', ",", "a,b",
    "\u2028", "\u2029", "\x85", "\f", "\v", "\x1c", "plain",
]  # fmt: skip


def read_back(path: Path) -> dict[str, list[list[str]]]:
    """The file's records as each reader gives them, header first."""
    with open(path, newline="", encoding="utf-8") as handle:
        python = list(csv.reader(handle))
    arrow = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    columns = [
        [str(value) for value in arrow.column(name).to_pylist()] for name in arrow.column_names
    ]
    # The file's dialect stated, so that DuckDB's sniffer cannot guess otherwise.
    relation = duckdb.sql(
        f"SELECT * FROM read_csv('{path}', header = true, all_varchar = true, "
        "delim = ',', quote = '\"', escape = '\"')"
    )
    return {
        "pipeline": list(csv_records(str(path))),
        "python csv": python,
        "pyarrow": [arrow.column_names, *map(list, zip(*columns, strict=True))],
        "duckdb": [list(relation.columns), *map(list, relation.fetchall())],
    }


def test_csv_lines_quote_every_line_break_and_parse_back_with_every_reader(tmp_path):
    rows = [[value, str(number)] for number, value in enumerate(AWKWARD)]
    path = tmp_path / "awkward.csv"
    # As Beam's WriteToText writes them: each line, then "\n".
    lines = [csv_line(["value", "number"]), *map(csv_line, rows)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="")
    for reader, records in read_back(path).items():
        assert records == [["value", "number"], *rows], reader
    quoted = [value for value in AWKWARD if csv_line([value, 1]).startswith('"')]
    assert quoted == AWKWARD[:-1], "only plain goes unquoted"
    assert csv_line(["plain", 1, 2.5]) == "plain,1,2.5"
    # U+2028 and the other line ends of str.splitlines are quoted too, so that a reader
    # that splits lines so before it parses gets them back.
    others = ["\u2028", "\u2029", "\x85", "\f", "\v", "\x1c", "\x1d", "\x1e"]
    text = "".join(csv_line([value, "x"]) + "\n" for value in others)
    assert list(csv.reader(text.splitlines(keepends=True))) == [[value, "x"] for value in others]


def test_the_pipelines_reader_skips_the_header_and_blank_lines(tmp_path):
    path = tmp_path / "index.csv"
    path.write_text('uri,file\r\n"a\r\nb",x\n\n"c",""\n', encoding="utf-8", newline="")
    records = csv_records(str(path), skip_header=True)
    assert list(records) == [["a\r\nb", "x"], ["c", ""]]


@pytest.mark.parametrize(
    "value, reason",
    [
        ("gs://b/a\0b.jpg", "holds a NUL character (at character 8)"),
        ("gs://b/\udcff.jpg", "is not UTF-8 text (a lone surrogate at character 7)"),
    ],
)
def test_what_no_csv_can_give_back_is_named(value, reason):
    assert unwritable(value) == reason
    assert [unwritable(value) for value in AWKWARD] == [None] * len(AWKWARD)


def test_a_value_no_csv_can_hold_is_dead_lettered_at_store(tmp_path):
    """.npy refuses it in the index's every field; Parquet only in the URI, the one field
    its CSV outputs (map coordinates, duplicates) carry."""
    vector = np.ones(4, dtype=np.float32)
    keys = {
        "newline": ImageKey("/x/two\nlines.jpg", 4, 3, columns=("fine",)),
        "nul uri": ImageKey("/x/nul\0.jpg", 4, 3, columns=("fine",)),
        "nul kept": ImageKey("/x/kept.jpg", 4, 3, columns=("a\0b",)),
    }
    kept = RowColumns(kept=("note",))
    schema = parquet_schema((4,), {"model": "m"}, kept)
    stores = {
        "npy": WriteNpy(str(tmp_path / "npy"), str(tmp_path / "npy"), "RUN", 1, kept),
        "parquet": WriteParquet(str(tmp_path / "parquet"), "RUN", schema, 1, kept),
    }
    refused = {"npy": ["nul uri", "nul kept"], "parquet": ["nul uri"]}
    with local_pipeline() as p:
        embeddings = p | beam.Create([(key, vector) for key in keys.values()])
        for name, store in stores.items():
            stored = embeddings | f"Store {name}" >> store
            failed = stored["failed"] | f"Why {name}" >> beam.Map(_failure_fields)
            expected = [(keys[which].uri, "store", "UnwritableText") for which in refused[name]]
            assert_that(failed, equal_to(expected), label=f"Refused {name}")
            assert_that(stored["embedded"], equal_to([3 - len(expected)]), label=f"Embedded {name}")
    assert [row["uri"] for row in npy_index(tmp_path / "npy")] == ["/x/two\nlines.jpg"]
    table, _ = read_parquet(tmp_path / "parquet")
    assert sorted(table.column("uri").to_pylist()) == ["/x/kept.jpg", "/x/two\nlines.jpg"]


def _failure_fields(failure: Failure) -> tuple[str, str, str]:
    assert "no CSV output could give it back" in failure.message, failure.message
    return failure.uri, failure.stage, failure.error_type


# A newline, and a CR, a comma, quotes and U+2028, in local file names.
NEWLINE = "two\nlines.jpg"
ODD = 'cr\r, "quoted"\u2028.png'
PHOTO_FILES = {"chelsea.png": "chelsea.png", "rocket.jpg": "rocket.jpg", NEWLINE: "rocket.jpg",
               ODD: "coffee.png"}  # fmt: skip


class Runs(NamedTuple):
    output_format: str
    photos: Path
    uris: list[str]
    first: Path  # the first run's output, copied before the rerun
    rerun: Path  # the same output after a --skip_existing rerun
    rerun_summary: dict


def run(photos: Path, output: Path, output_format: str, *flags: str):
    result = run_cli(
        "--input", str(photos / "*"), "--output", str(output), "--output_format", output_format,
        "--weights", "random", "--map", "--neighbors", "3", "--duplicate_threshold", "0.95",
        *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module", params=["npy", "parquet"])
def runs(request, tmp_path_factory) -> Runs:
    """Four photographs, two with awkward names (one a copy of rocket.jpg), run once and
    then again with --skip_existing into the same output."""
    root = tmp_path_factory.mktemp(f"csv_{request.param}")
    photos = root / "photos"
    photos.mkdir()
    for name, source in PHOTO_FILES.items():
        shutil.copyfile(PHOTOS / source, photos / name)
    output = root / "out"
    run(photos, output, request.param)
    shutil.copytree(output, root / "first")
    run(photos, output, request.param, "--skip_existing")
    uris = sorted(str(photos / name) for name in PHOTO_FILES)
    return Runs(request.param, photos, uris, root / "first", output, summary(output))


def csv_outputs(output: Path) -> dict[str, Path]:
    """Every CSV file of a one-run output, by its kind (name without run and shard)."""
    found = {}
    for path in glob.glob(str(output / "*.csv")):
        kind = Path(path).name.rsplit("-", 5)[0]
        assert kind not in found, f"two {kind} files"
        found[kind] = Path(path)
    return found


def uri_columns(path: Path) -> dict[str, list[str]]:
    """The uri column as each reader gives it."""
    uris = {}
    for reader, records in read_back(path).items():
        column = records[0].index("uri")
        uris[reader] = [record[column] for record in records[1:]]
    return uris


@pytest.mark.pipeline_run
def test_every_csv_output_parses_back_to_the_right_uris(runs):
    outputs = csv_outputs(runs.first)
    expected = {"map-coordinates", "duplicates"}
    if runs.output_format == "npy":
        expected.add("embeddings-index")
    assert set(outputs) == expected
    for kind, path in outputs.items():
        found = uri_columns(path)
        python = found["python csv"]
        assert all(uris == python for uris in found.values()), (kind, found)
        if kind == "duplicates":
            # rocket.jpg and its copy are one image: a group of their own, or within one.
            pair = {str(runs.photos / "rocket.jpg"), str(runs.photos / NEWLINE)}
            assert pair <= set(python), python
        else:
            assert sorted(python) == runs.uris, kind


@pytest.mark.pipeline_run
def test_the_stored_embeddings_hold_every_uri_once(runs):
    if runs.output_format == "npy":
        index = npy_index(runs.first)
        assert sorted(row["uri"] for row in index) == runs.uris
        assert all((runs.first / "embeddings" / row["file"]).is_file() for row in index)
    else:
        table, _ = read_parquet(runs.first)
        assert sorted(table.column("uri").to_pylist()) == runs.uris


@pytest.mark.pipeline_run
def test_a_skip_existing_rerun_skips_every_uri_and_adds_no_row(runs):
    counts = runs.rerun_summary
    assert (counts["skipped_existing"], counts["embedded"], counts["failed"]) == (4, 0, 0)
    if runs.output_format == "npy":
        assert sorted(row["uri"] for row in npy_index(runs.rerun)) == runs.uris
    else:
        table, _ = read_parquet(runs.rerun)
        assert sorted(table.column("uri").to_pylist()) == runs.uris
    # The rerun's search covers the earlier embeddings: the pair is found again.
    [duplicates] = glob.glob(str(runs.rerun / "duplicates-*.csv"))
    assert str(runs.photos / NEWLINE) in uri_columns(Path(duplicates))["python csv"]
