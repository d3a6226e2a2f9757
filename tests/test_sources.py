"""Reading URIs: the CSV rule, blank lines, whitespace, duplicates, missing values."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.sources import InputError, ReadImageUris, sniff_layout


def run_read(path, expected_uris, rows, duplicates, failed_lines):
    with TestPipeline(runner="FnApiRunner") as p:
        result = p | ReadImageUris(str(path))
        assert_that(result["uris"], equal_to(expected_uris), label="uris")
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


def test_a_missing_input_file_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        sniff_layout(str(tmp_path / "nope.csv"))
