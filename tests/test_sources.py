"""Reading URIs: the CSV rule, blank lines, whitespace, duplicates, missing values."""

from __future__ import annotations

import gzip
import os

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to
from support import PHOTO_PATHS, local_pipeline, write_csv

from pipeline.inputs.sources import (
    CsvLayout,
    InputError,
    ParseRowFn,
    ReadImageUris,
    count_inputs,
    first_uris,
    keep_columns_layout,
    sniff_layout,
)
from pipeline.local_runner import use_local_runner_defaults


def run_read(path, expected_uris, rows, duplicates, failed_lines):
    with local_pipeline() as p:
        result = p | ReadImageUris(str(path))
        assert_that(result["uris"] | beam.Keys(), equal_to(expected_uris), label="uris")
        assert_that(result["rows"], equal_to([rows]), label="rows")
        assert_that(result["duplicates"], equal_to([duplicates]), label="duplicates")
        failed = result["failed"] | beam.Map(lambda f: (f.uri, f.stage, f.error_type))
        assert_that(failed, equal_to(failed_lines), label="failed")


def test_header_names_the_uri_column_anywhere(tmp_path):
    path = tmp_path / "with_header.csv"
    path.write_text(
        "\ufeff\nlabel, URI ,split\n"
        "cat, gs://b/cat.jpg ,train\n"
        "\n"
        "dog,gs://b/dog.jpg,test\n"
        "cat again,gs://b/cat.jpg,train\n"
        "no uri,,train\n"
        '"a, b","gs://b/with,comma.jpg",x\n'
        ",,\n"
    )
    assert sniff_layout(str(path)).column == 1
    run_read(
        path,
        ["gs://b/cat.jpg", "gs://b/dog.jpg", "gs://b/with,comma.jpg"],
        rows=4,
        duplicates=1,
        failed_lines=[("no uri,,train", "read", "MissingUri")],
    )


def test_without_header_the_first_column_is_the_uri(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("\ufeff/data/a.png\n  /data/b.png  \n\n/data/a.png\n/data/a.png\n")
    assert sniff_layout(str(path)).skip_lines == 0
    run_read(path, ["/data/a.png", "/data/b.png"], rows=4, duplicates=2, failed_lines=[])


# Values a catalogue really holds: commas, quotes, unicode, leading spaces, nothing.
AWKWARD = {
    "gs://b/1.jpg": ("a, b", 'say "cheese"'),
    "gs://b/2.jpg": ("Zürich — 東京 🚀", ""),
    "gs://b/3.jpg": ("  padded  ", "line\\n"),
}


def test_kept_columns_travel_exactly_and_repeats_that_disagree_are_dead_lettered(tmp_path):
    import csv

    path = tmp_path / "catalogue.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "uri", "note"])
        for uri, (label, note) in AWKWARD.items():
            writer.writerow([label, uri, note])
        writer.writerow(["a, b", "gs://b/1.jpg", 'say "cheese"'])  # a true repeat
        writer.writerow(["other", "gs://b/2.jpg", ""])  # the same URI, another label
        handle.write('x,gs://b/4.jpg,"unclosed\n')  # a stray quote
        handle.write("x,gs://b/5.jpg,one,too many\n")  # an unquoted comma
    layout = keep_columns_layout(str(path), ("note", "label"))
    assert (layout.column, layout.kept) == (1, (2, 0))
    with local_pipeline() as p:
        result = p | ReadImageUris(str(path), keep_columns=("note", "label"))
        expected = [(uri, (note, label)) for uri, (label, note) in AWKWARD.items()]
        assert_that(result["uris"], equal_to(expected), label="rows")
        assert_that(result["rows"], equal_to([4]), label="rows with a URI")
        assert_that(result["duplicates"], equal_to([1]), label="duplicates")
        failed = result["failed"] | beam.Map(lambda f: (f.uri, f.error_type, f.message[:30]))
        assert_that(
            failed,
            equal_to(
                [
                    ("gs://b/2.jpg", "ConflictingDuplicate", "listed again with other values"),
                    ("gs://b/4.jpg", "MalformedRow", "not a well-formed CSV row (une"),
                    ("gs://b/5.jpg", "MalformedRow", "the row has 4 fields, the head"),
                ]
            ),
            label="failed",
        )


def test_kept_columns_need_a_header_that_names_them(tmp_path):
    with_header = tmp_path / "with_header.csv"
    with_header.write_text("uri,label\ngs://b/1.jpg,cat\n")
    with pytest.raises(InputError, match=r"colour not in the header .*\(its columns: uri, label\)"):
        keep_columns_layout(str(with_header), ("label", "colour"))
    plain = tmp_path / "plain.csv"
    plain.write_text("gs://b/1.jpg,cat\n")
    with pytest.raises(InputError, match="needs a header row"):
        keep_columns_layout(str(plain), ("label",))
    with pytest.raises(InputError, match="is a glob of images"):
        keep_columns_layout(str(tmp_path / "*.jpg"), ("label",))


def test_a_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        sniff_layout(str(tmp_path / "nope.csv"))


def test_a_row_that_is_not_utf8_is_a_read_failure_and_the_others_are_read(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        b"uri,label\ngs://b/a.jpg,cat\ngs://b/caf\xe9.jpg,caf\xe9\n\xff\xfe\ngs://b/b.jpg,dog\n"
    )
    assert sniff_layout(str(path)).skip_lines == 1
    assert count_inputs(str(path), 500) == 4
    run_read(
        path,
        ["gs://b/a.jpg", "gs://b/b.jpg"],
        rows=2,
        duplicates=0,
        failed_lines=[
            ("gs://b/caf\\xe9.jpg,caf\\xe9", "read", "UnicodeDecodeError"),
            ("\\xff\\xfe", "read", "UnicodeDecodeError"),
        ],
    )


def test_a_first_line_that_is_not_utf8_is_a_row_unless_it_is_the_header(tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_bytes(b"gs://b/caf\xe9.jpg\ngs://b/b.jpg\n")
    assert sniff_layout(str(rows)).skip_lines == 0
    assert count_inputs(str(rows), 500) == 2
    run_read(
        rows,
        ["gs://b/b.jpg"],
        rows=1,
        duplicates=0,
        failed_lines=[("gs://b/caf\\xe9.jpg", "read", "UnicodeDecodeError")],
    )
    header = tmp_path / "header.csv"
    header.write_bytes(b"uri,caf\xe9\ngs://b/a.jpg,x\n")
    with pytest.raises(InputError, match=r"line 1 of .*header.csv.* is not UTF-8.*byte 7"):
        sniff_layout(str(header))
    with pytest.raises(InputError, match="is not UTF-8"):
        count_inputs(str(header), 500)


def test_rows_the_csv_module_cannot_split_are_read_failures(tmp_path):
    long_uri = "gs://b/" + "x" * 200_000 + ".jpg"
    path = tmp_path / "awkward.csv"
    path.write_bytes(f"uri\ngs://b/a.jpg\n{long_uri}\ngs://b/c\rd.jpg\ngs://b/b.jpg\n".encode())
    assert count_inputs(str(path), 500) == 4
    run_read(
        path,
        ["gs://b/a.jpg", "gs://b/b.jpg"],
        rows=2,
        duplicates=0,
        failed_lines=[
            (long_uri[:200] + "...", "read", "MalformedRow"),
            ("gs://b/c\rd.jpg", "read", "MalformedRow"),
        ],
    )
    # Old Mac line ends: one line, which is no header but a row the reader refuses.
    mac = tmp_path / "mac.csv"
    mac.write_bytes(b"uri\rgs://b/a.jpg\rgs://b/b.jpg\r")
    assert sniff_layout(str(mac)) == CsvLayout()
    assert count_inputs(str(mac), 500) == 1


def test_a_quoted_line_break_in_the_input_is_a_read_failure_that_says_why(tmp_path):
    """The input is read a line at a time (Beam splits it at line ends): a record whose
    quoted URI holds a line break arrives as two lines; the first says what happened."""
    path = tmp_path / "newline.csv"
    path.write_text('uri\n"/p/two\nlines.jpg"\n/p/b.jpg\n')
    run_read(
        path,
        ['lines.jpg"', "/p/b.jpg"],
        rows=2,
        duplicates=0,
        failed_lines=[("/p/two", "read", "MalformedRow")],
    )
    [failure] = ParseRowFn(CsvLayout(skip_lines=1)).process(b'"/p/two')
    assert "cannot hold a line break" in failure.value.message


def test_a_matched_file_name_that_is_not_utf8_is_a_read_failure(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    os.close(os.open(os.fsencode(tmp_path) + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY))
    run_read(
        tmp_path / "*.png",
        [str(tmp_path / "a.png")],
        rows=1,
        duplicates=0,
        failed_lines=[(f"{tmp_path}/caf\\xe9.png", "read", "UnicodeDecodeError")],
    )


def test_count_inputs_counts_rows_as_the_reader_does_and_stops_past_the_limit(tmp_path):
    def csv_file(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    rows = "".join(f"gs://b/{i}.jpg\n" for i in range(500))
    assert count_inputs(csv_file("500.csv", "uri\n" + rows), 500) == 500
    assert count_inputs(csv_file("501.csv", "uri\n" + rows + "gs://b/x.jpg\n"), 500) is None
    assert count_inputs(csv_file("empty.csv", ""), 500) == 0
    assert count_inputs(csv_file("header.csv", "label,uri\n"), 500) == 0
    # Blank lines and all-empty rows are not rows; a header-less file counts its first line.
    assert count_inputs(csv_file("sparse.csv", "a.jpg\n\n , \nb.jpg,x\n"), 500) == 2
    with gzip.open(tmp_path / "rows.csv.gz", "wt") as handle:
        handle.write("uri\n" + rows[:300])
    assert count_inputs(str(tmp_path / "rows.csv.gz"), 500) == len(rows[:300].splitlines())
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    assert count_inputs(str(tmp_path / "*.png"), 500) == 3
    assert count_inputs(str(tmp_path / "*.png"), 2) is None


@pytest.mark.parametrize(
    ("argv", "small", "mode", "workers"),
    [
        ([], True, "in_memory", 1),
        ([], False, "multi_threading", 0),
        (["--direct_running_mode=multi_processing"], True, "multi_processing", 0),
        (["--direct_num_workers=3"], False, "multi_threading", 3),
    ],
)
def test_the_local_runner_mode_follows_the_input_size_unless_set(argv, small, mode, workers):
    options = PipelineOptions(argv)
    use_local_runner_defaults(options, argv, small_input=small)
    direct = options.view_as(DirectOptions)
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert (direct.direct_running_mode, direct.direct_num_workers) == (mode, workers)


# --- Parquet manifests ----------------------------------------------------------------------


def pq_write(columns: dict, path, **options) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, **options)
    return str(path)


def write_manifest(path, urls, **columns) -> str:
    """A Parquet manifest as LAION, DataComp and COYO publish them: a url column, a caption,
    an int64 id and a licence (null for every third row), several row groups."""
    import pyarrow as pa

    count = len(urls)
    table = {
        "url": pa.array(urls, pa.string()),
        "caption": [f"a photo, number {i}" for i in range(count)],
        "id": pa.array(range(1000, 1000 + count), pa.int64()),
        "licence": [None if i % 3 == 0 else "CC BY 4.0" for i in range(count)],
        **columns,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return pq_write(table, path, row_group_size=4)


def read_rows(inputs: dict[str, tuple], expected: dict[str, list]):
    """Reads each input (ReadImageUris's arguments) in one pipeline; asserts its rows.
    Returns the rows_read counter, summed over the inputs."""
    from pipeline.common import NAMESPACE

    p = local_pipeline()
    for name, arguments in inputs.items():
        result = p | f"Read {name}" >> ReadImageUris(*arguments)
        assert_that(result["uris"], equal_to(expected[name]), label=f"rows of {name}")
    outcome = p.run()
    outcome.wait_until_finish()
    counted = outcome.metrics().query(MetricsFilter().with_name("rows_read"))["counters"]
    return sum(read.committed for read in counted if read.key.metric.namespace == NAMESPACE)


def test_a_manifest_yields_the_rows_a_csv_of_the_same_uris_does(tmp_path):
    listed = [*PHOTO_PATHS, *PHOTO_PATHS[:2]]  # two repeats, dropped
    manifest = write_manifest(tmp_path / "photos.parquet", listed)
    csv_path = write_csv(tmp_path / "photos.csv", listed)
    rows = [(path, ()) for path in PHOTO_PATHS]
    inputs = {"manifest": (manifest,), "csv": (str(csv_path),)}
    assert read_rows(inputs, {"manifest": rows, "csv": rows}) == 2 * len(listed)
    assert count_inputs(manifest, 500) == len(listed)
    assert count_inputs(manifest, 5) is None
    assert first_uris(manifest, 3) == first_uris(str(csv_path), 3) == tuple(PHOTO_PATHS[:3])


def test_kept_columns_become_strings_and_a_row_without_a_url_is_a_read_failure(tmp_path):
    import pyarrow as pa

    urls = [*PHOTO_PATHS[:4], None, "  ", PHOTO_PATHS[0]]
    scores = pa.array([0.25, 1.0, None, 1e20, 0.5, 0.5, 0.25], pa.float64())
    manifest = write_manifest(tmp_path / "m.parquet", urls, score=scores)
    keep = ("caption", "id", "licence", "score")
    layout = keep_columns_layout(manifest, keep)
    assert (layout.uri_column, layout.kept, layout.columns) == ("url", keep, ["url", *keep])
    with local_pipeline() as p:
        result = p | ReadImageUris(manifest, keep_columns=keep)
        expected = [
            (PHOTO_PATHS[0], ("a photo, number 0", "1000", "", "0.25")),
            (PHOTO_PATHS[1], ("a photo, number 1", "1001", "CC BY 4.0", "1")),
            (PHOTO_PATHS[2], ("a photo, number 2", "1002", "CC BY 4.0", "")),
            (PHOTO_PATHS[3], ("a photo, number 3", "1003", "", "1e+20")),
        ]
        assert_that(result["uris"], equal_to(expected), label="rows")
        assert_that(result["rows"], equal_to([4]), label="rows with a URI")
        assert_that(result["duplicates"], equal_to([0]), label="duplicates")
        failed = result["failed"] | beam.Map(lambda f: (f.uri, f.stage, f.error_type, f.message))
        missing = [
            (
                '{"url": null, "caption": "a photo, number 4", "id": "1004", '
                '"licence": "CC BY 4.0", "score": "0.5"}',
                "read",
                "MissingUri",
                "no URI in column url (null)",
            ),
            (
                '{"url": "  ", "caption": "a photo, number 5", "id": "1005", '
                '"licence": "CC BY 4.0", "score": "0.5"}',
                "read",
                "MissingUri",
                "no URI in column url (empty)",
            ),
            (  # the repeat of the first URI, with another caption and id
                PHOTO_PATHS[0],
                "read",
                "ConflictingDuplicate",
                "listed again with other values of caption, id, licence, score: "
                "['a photo, number 6', '1006', '', '0.25']; the embedding keeps "
                "['a photo, number 0', '1000', '', '0.25']",
            ),
        ]
        assert_that(failed, equal_to(missing), label="failed")


def test_uri_column_names_the_column_of_a_manifest_or_a_csv(tmp_path):
    mirrors = [f"gs://mirror/{i}.jpg" for i in range(3)]
    manifest = write_manifest(tmp_path / "m.parquet", ["gs://b/a.jpg"] * 3, mirror=mirrors)
    assert first_uris(manifest, 5) == ("gs://b/a.jpg",)
    assert first_uris(manifest, 5, "mirror") == tuple(mirrors)
    # LAION's column is URL: the default names match in any case.
    laion = tmp_path / "laion.parquet"
    pq_write({"URL": ["gs://b/x.jpg"], "TEXT": ["x"]}, laion)
    assert keep_columns_layout(str(laion), ("TEXT",)).uri_column == "URL"
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,url,mirror\n1,gs://b/a.jpg,gs://mirror/0.jpg\n")
    assert sniff_layout(str(csv_path)) == CsvLayout(1, 1, ("id", "url", "mirror"))
    assert sniff_layout(str(csv_path), "mirror").column == 2
    inputs = {
        "manifest": (manifest, None, ("id",), "mirror"),
        "csv": (str(csv_path), None, (), "mirror"),
    }
    expected = {
        "manifest": [(uri, (str(1000 + i),)) for i, uri in enumerate(mirrors)],
        "csv": [("gs://mirror/0.jpg", ())],
    }
    assert read_rows(inputs, expected) == 4


def test_columns_a_manifest_or_csv_lacks_are_refused_at_launch_in_one_line(tmp_path):
    from pipeline.job import run

    manifest = write_manifest(tmp_path / "m.parquet", ["gs://b/a.jpg"])
    columns = r"\(its columns: url, caption, id, licence\)$"
    refusals = {
        ("caption", "colour"): (
            "",
            rf"^--keep_columns: colour not in the Parquet schema .*{columns}",
        ),
        (): ("link", rf"^--uri_column link: not in the Parquet schema of .*m.parquet {columns}"),
    }
    for keep, (uri_column, message) in refusals.items():
        argv = ["--input", manifest, "--output", str(tmp_path / "out"), "--keep_columns"]
        argv += [",".join(keep), "--uri_column", uri_column]
        with pytest.raises(InputError, match=message) as refused:
            run(argv)  # refused before it takes the output's lease
        assert "\n" not in str(refused.value)
    no_url = pq_write({"link": ["gs://b/a.jpg"], "tags": [["a", "b"]]}, tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"no uri or url column; name .* --uri_column \(its"):
        first_uris(no_url, 1)
    with pytest.raises(InputError, match=r"tags \(list<element: string>\) in .* cannot be kept"):
        keep_columns_layout(no_url, ("tags",), "link")
    with pytest.raises(InputError, match="URI column tags holds list<element: string>, not"):
        keep_columns_layout(no_url, (), "tags")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,url\n1,gs://b/a.jpg\n")
    with pytest.raises(InputError, match=r"^--uri_column link: not in the header of .*: id,url\)$"):
        keep_columns_layout(str(csv_path), (), "link")
    with pytest.raises(InputError, match="--uri_column needs a CSV input with a header row or"):
        keep_columns_layout(str(tmp_path / "*.jpg"), (), "url")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"the folder holds no \.parquet files"):
        keep_columns_layout(str(tmp_path / "empty"), ())
    (tmp_path / "text.parquet").write_text("uri\ngs://b/a.jpg\n")
    with pytest.raises(InputError, match=r"text\.parquet is not a Parquet file"):
        keep_columns_layout(str(tmp_path / "text.parquet"), ())


def test_a_folder_or_a_glob_of_two_manifests_reads_both(tmp_path):
    from pipeline.dry_run import check_input

    folder = tmp_path / "laion"
    write_manifest(folder / "part-0.parquet", PHOTO_PATHS[:5])
    write_manifest(folder / "part-1.parquet", PHOTO_PATHS[5:])
    (folder / "_SUCCESS").write_text("")  # as Spark leaves it: not read
    rows = [
        (path, (f"a photo, number {i}",))
        for part in (PHOTO_PATHS[:5], PHOTO_PATHS[5:])
        for i, path in enumerate(part)
    ]
    inputs = {
        "folder": (f"{folder}/", None, ("caption",)),
        "directory": (str(folder), None, ("caption",)),
        "glob": (str(folder / "part-*.parquet"), None, ("caption",)),
    }
    assert read_rows(inputs, dict.fromkeys(inputs, rows)) == 3 * len(PHOTO_PATHS)
    for path, _, _ in inputs.values():
        assert count_inputs(path, 500) == len(PHOTO_PATHS)
        assert first_uris(path, 7) == tuple(PHOTO_PATHS[:7])
    assert check_input(str(folder)) == f"{folder}: 13 rows, the first {PHOTO_PATHS[0]}"
