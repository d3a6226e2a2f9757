"""Reading an image's bytes: the size limits, what is not a regular file, local paths."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cloud import MetadataServer, emulator_client, storage_emulator
from PIL import Image
from support import PHOTO_PATHS, REPO, write_bomb

from pipeline.common import FAILED
from pipeline.inputs.images import Resize
from pipeline.inputs.loading import Decoding, LoadImageFn, read_bytes
from pipeline.inputs.uris import ImageTooLargeError, NotARegularFileError, UnsupportedUriError

PHOTO = Path(PHOTO_PATHS[0])


def within(seconds: float, function, *args, **kwargs):
    """function(*args, **kwargs), or a failed test if it has not returned in time (a read
    of a fifo with no writer never returns)."""
    outcome: dict = {}

    def call():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed to the test below
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__}{args} did not return in {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_file_up_to_the_limit_is_read_whole_and_a_larger_one_is_refused():
    size = PHOTO.stat().st_size
    assert read_bytes(str(PHOTO), max_bytes=size) == PHOTO.read_bytes()
    with pytest.raises(ImageTooLargeError) as refused:
        read_bytes(str(PHOTO), max_bytes=size - 1)
    assert f"{size} bytes" in str(refused.value)
    assert f"--max_image_bytes {size - 1}" in str(refused.value)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda tmp: Path("/dev/zero"), "a character device"),
        (lambda tmp: tmp, "a directory"),
        (lambda tmp: (os.mkfifo(tmp / "pipe.jpg"), tmp / "pipe.jpg")[1], "a named pipe"),
    ],
    ids=["dev-zero", "directory", "fifo"],
)
def test_what_is_not_a_regular_file_is_refused_unread(make, kind, tmp_path):
    path = make(tmp_path)
    with pytest.raises(NotARegularFileError, match=f"is {kind}, not a regular file"):
        within(10, read_bytes, str(path), max_bytes=1000)


def test_a_link_to_a_device_is_refused_as_the_device(tmp_path):
    link = tmp_path / "photo.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(NotARegularFileError, match="a character device"):
        within(10, read_bytes, str(link), max_bytes=1000)


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_bytes(str(tmp_path / "missing.jpg"))


def test_local_paths_are_refused_where_they_would_name_a_workers_disk():
    with pytest.raises(UnsupportedUriError, match=r"local path.*remote runner.*gs://"):
        read_bytes(str(PHOTO), local_paths=False)
    assert read_bytes(str(PHOTO), local_paths=True) == PHOTO.read_bytes()


# Run in a process of its own: Beam's GCS client keeps the first credentials it finds.
GCS_READ = """
import sys
from pipeline.inputs.loading import read_bytes
from pipeline.inputs.uris import ImageTooLargeError
uri, size = sys.argv[1], int(sys.argv[2])
assert read_bytes(uri, max_bytes=size, local_paths=False) == open(sys.argv[3], "rb").read()
try:
    read_bytes(uri, max_bytes=size - 1, local_paths=False)
except ImageTooLargeError as error:
    print(error)
"""


def test_a_cloud_storage_object_over_the_limit_is_refused():
    bucket = "limits"
    size = PHOTO.stat().st_size
    metadata = MetadataServer()
    try:
        with storage_emulator(bucket) as emulator:
            emulator_client(emulator).bucket(bucket).blob("big.png").upload_from_filename(PHOTO)
            uri = f"gs://{bucket}/big.png"
            result = subprocess.run(
                [sys.executable, "-c", GCS_READ, uri, str(size), str(PHOTO)],
                cwd=REPO,
                env={**os.environ, "STORAGE_EMULATOR_HOST": emulator, **metadata.environment},
                capture_output=True,
                text=True,
                timeout=120,
            )
    finally:
        metadata.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (f"{uri}: {size} bytes, more than --max_image_bytes {size - 1}")


def test_a_bomb_that_pillow_refuses_itself_is_reported_against_max_image_pixels(
    tmp_path, monkeypatch
):
    # setup sets Pillow's own limit, which Image.open enforces at twice its value
    # (20,000,000 here) before the load step sees the image's size.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    write_bomb(tmp_path / "bomb.png", side=5000)
    load = LoadImageFn(Decoding(Resize(224), jpeg_draft=True, max_pixels=10_000_000))
    load.setup()
    (output,) = load.process(str(tmp_path / "bomb.png"))
    assert output.tag == FAILED
    assert output.value.error_type == "DecompressionBombError"
    assert output.value.message == "25000000 pixels, more than --max_image_pixels 10000000"
