"""Rows that once took a run down: a file over the size limit, a device, a directory, a
fifo, a row that is not UTF-8. One local run; each is a dead-letter line, the rest embed."""

from __future__ import annotations

import os

import pytest
from PIL import Image
from support import PHOTOS, dead_letter, parquet_embeddings, run_cli, summary, write_csv

pytestmark = pytest.mark.pipeline_run

MAX_IMAGE_BYTES = 100_000
NOT_UTF8_ROW = b"/data/caf\xe9.png,x"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    small_jpeg = root / "chelsea.jpg"
    with Image.open(PHOTOS / "chelsea.png") as image:
        image.convert("RGB").save(small_jpeg, quality=85)
    good = [str(PHOTOS / "horse.png"), str(PHOTOS / "coins.png"), str(small_jpeg)]
    assert all(os.path.getsize(path) <= MAX_IMAGE_BYTES for path in good)
    too_large = str(PHOTOS / "astronaut.png")
    folder = root / "folder.jpg"
    folder.mkdir()
    fifo = root / "pipe.jpg"
    os.mkfifo(fifo)
    refused = {
        too_large: ("load", "ImageTooLargeError", f"{os.path.getsize(too_large)} bytes, more "),
        "/dev/zero": ("load", "NotARegularFileError", "is a character device"),
        str(folder): ("load", "NotARegularFileError", "is a directory"),
        str(fifo): ("load", "NotARegularFileError", "is a named pipe"),
        NOT_UTF8_ROW.decode("utf-8", "backslashreplace"): ("read", "UnicodeDecodeError", "UTF-8"),
    }
    loaded = [uri for uri, (stage, _, _) in refused.items() if stage == "load"]
    csv_path = write_csv(root / "images.csv", [*good, *loaded])
    with open(csv_path, "ab") as handle:
        handle.write(NOT_UTF8_ROW + b"\r\n")
    output = root / "out"
    result = run_cli(
        "--input", str(csv_path),
        "--output", str(output),
        "--weights", "random",
        "--max_image_bytes", str(MAX_IMAGE_BYTES),
        "--max_failure_fraction", "0.9",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"output": output, "good": good, "refused": refused}


def test_each_refused_input_is_a_dead_letter_line_with_its_reason(hostile):
    records = {record["uri"]: record for record in dead_letter(hostile["output"])}
    assert set(records) == set(hostile["refused"])
    for uri, (stage, error_type, reason) in hostile["refused"].items():
        record = records[uri]
        assert (record["stage"], record["error_type"]) == (stage, error_type), record
        assert reason in record["message"], record
    too_large = records[str(PHOTOS / "astronaut.png")]["message"]
    assert f"--max_image_bytes {MAX_IMAGE_BYTES}" in too_large


def test_every_other_photo_is_embedded_and_every_row_is_counted(hostile):
    assert set(parquet_embeddings(hostile["output"])) == set(hostile["good"])
    got = summary(hostile["output"])
    refused = len(hostile["refused"])
    assert got["rows_read"] == len(hostile["good"]) + refused
    assert got["embedded"] == len(hostile["good"])
    assert got["failed_by_stage"] == {"read": 1, "load": refused - 1, "extract": 0, "store": 0}
    assert got["reconciled"] is True
