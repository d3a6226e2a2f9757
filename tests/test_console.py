"""What a person sees of a run: the whole terminal output of a run on the photographs,
through a pseudo-terminal and through a pipe, as `python -m pipeline` prints it in a fresh
interpreter; the failure budgets' floor; int8 refused on too few images."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from support import PHOTO_PATHS, REPO, parquet_embeddings, run_cli, summary, write_csv

pytestmark = pytest.mark.pipeline_run

# A line any of TensorFlow, absl, gRPC or the CUDA probe writes on its own.
CHATTER = re.compile(r"absl|cuda|cuInit|oneDNN|tensorflow|fork_posix|grpc|^[IWE]\d{4} ", re.I)
MAX_LINES = 25
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], timeout: float = 300) -> tuple[int, str]:
    """python -m pipeline ARGS with its standard streams on a pseudo-terminal 100 columns
    wide; the exit status and everything it wrote."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    written = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the run closed its end
                break
            if not chunk:
                break
            written += chunk
        return process.wait(timeout=max(deadline - time.monotonic(), 1)), written.decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)


def screen_lines(text: str) -> list[str]:
    """The lines left on the screen: each line as its last carriage return left it."""
    lines = ANSI.sub("", text).replace("\r\n", "\n").split("\n")
    return [line.rsplit("\r", 1)[-1].rstrip() for line in lines if line.rsplit("\r", 1)[-1].strip()]


@pytest.fixture(scope="module")
def photos_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("console") / "photos.csv", PHOTO_PATHS)


def user_args(photos_csv: Path, output: Path) -> list[str]:
    return ["--input", str(photos_csv), "--output", str(output), "--weights", "random", "--map"]


@pytest.fixture(scope="module")
def user_runs(photos_csv, tmp_path_factory) -> dict:
    """The same run twice, as a user starts it, side by side (each is mostly its
    interpreter's start): through a pseudo-terminal, and through a pipe."""
    root = tmp_path_factory.mktemp("user-runs")
    piped = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *user_args(photos_csv, root / "piped")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        code, text = run_in_terminal(user_args(photos_csv, root / "terminal"))
        stdout, stderr = piped.communicate(timeout=300)
    finally:
        if piped.poll() is None:
            piped.kill()
            piped.wait()
    return {
        "terminal": (root / "terminal", code, text),
        "pipe": (root / "piped", subprocess.CompletedProcess(piped.args, piped.returncode,
                                                             stdout, stderr)),
    }  # fmt: skip


def test_a_run_on_a_terminal_shows_a_bar_to_the_total_and_no_library_chatter(user_runs):
    output, code, text = user_runs["terminal"]
    lines = screen_lines(text)
    assert code == 0, text[-3000:]
    assert len(lines) < MAX_LINES, "\n".join(lines)
    assert [line for line in lines if CHATTER.search(line)] == [], "\n".join(lines)
    total = len(PHOTO_PATHS)
    [bar] = [line for line in lines if f"{total}/{total} images" in line]
    assert bar.startswith("100%|"), bar
    assert re.search(r"\[0\d:\d\d<00:00, +\d+\.\d\d images/s\]$", bar), bar  # since the start
    assert [line for line in lines if line.startswith("Embedded ")] == [
        next(
            line
            for line in lines
            if line.startswith(f"Embedded {total} of {total} rows (0 failed)")
        )
    ]
    assert lines[-1] == f"Open {output}/report.html in a browser to see the map and the report."
    assert summary(output)["embedded"] == total


def test_a_run_through_a_pipe_prints_lines_and_no_library_chatter(user_runs):
    output, result = user_runs["pipe"]
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    assert len(lines) < MAX_LINES, "\n".join(lines)
    assert [line for line in lines if CHATTER.search(line)] == [], "\n".join(lines)
    assert "\r" not in result.stderr  # no bar off a terminal
    total = len(PHOTO_PATHS)
    assert re.search(rf"^{total} of {total} images \[", result.stderr, re.M), result.stderr
    assert result.stdout.startswith(f"Embedded {total} of {total} rows (0 failed)")
    assert summary(output)["embedded"] == total


def test_one_bad_row_in_a_short_list_publishes_the_good_embeddings(tmp_path):
    missing = str(tmp_path / "typo.jpg")
    csv_path = write_csv(tmp_path / "list.csv", [*PHOTO_PATHS, missing])
    output = tmp_path / "out"
    result = run_cli("--input", str(csv_path), "--output", str(output), "--weights", "random")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(parquet_embeddings(output)) == sorted(PHOTO_PATHS)
    made = summary(output)
    assert (made["failed"], made["max_failures"], made["status"]) == (1, 3, "passed")
    assert made["first_failures"][0]["uri"] == missing
    # The result says where the failure is listed.
    [listed] = [line for line in result.stdout.splitlines() if line.startswith("  failures ")]
    assert listed.endswith(f" cat {output}/failures-*.jsonl")


def test_int8_on_fewer_images_than_calibration_needs_is_one_line_and_leaves_nothing(tmp_path):
    csv_path = write_csv(tmp_path / "five.csv", PHOTO_PATHS[:5])
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(csv_path), "--output", str(output), "--weights", "random",
        "--precision", "int8",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --precision int8 calibrates on at least 8 images, and the input lists 5: "
        "use --precision bfloat16 or float32 for so few"
    ]
    assert not output.exists()
