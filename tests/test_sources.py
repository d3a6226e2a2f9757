"""Reading URIs: the CSV rule, blank lines, whitespace, duplicates, missing values."""

from __future__ import annotations

import gzip
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to
from support import local_pipeline

from pipeline.inputs.sources import (
    CsvLayout,
    InputError,
    ParseRowFn,
    ReadImageUris,
    count_inputs,
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
