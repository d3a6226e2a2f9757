"""A run killed midway leaves no half-written output, and a resumed run completes it."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import REPO, many_photos, npy_index, run_cli, summary, write_csv

pytestmark = pytest.mark.pipeline_run

IMAGES = 40


def writing_started(output: Path, output_format: str) -> bool:
    if output_format == "npy":
        return len(glob.glob(str(output / "embeddings" / "*" / "*.npy"))) >= 3
    # Beam's sink opens its temporary shard, in the run's folder, when the first row arrives.
    staged = output / "_runs" / "*" / "embeddings" / "beam-temp-embeddings-*" / "*"
    return bool(glob.glob(str(staged)))


def kill_midway(args: list[str], output: Path, output_format: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the worker processes die too
    )
    deadline = time.monotonic() + 300
    while not writing_started(output, output_format):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def everything_visible_loads(output: Path) -> None:
    import pyarrow.parquet as pq

    for path in glob.glob(str(output / "embeddings" / "embeddings-*.parquet")):
        pq.read_table(path)
    for path in glob.glob(str(output / "embeddings" / "*" / "*.npy")):
        assert np.load(path).shape == (2048,)


@pytest.mark.parametrize("output_format", ["parquet", "npy"])
def test_killed_run_is_completed_by_a_skip_existing_rerun(output_format, tmp_path):
    uris = many_photos(tmp_path / "photos", IMAGES)
    csv_path = write_csv(tmp_path / "images.csv", uris)
    output = tmp_path / "out"
    args = ["--input", str(csv_path), "--output", str(output), "--output_format", output_format,
            "--weights", "random", "--skip_existing", "--max_batch_size", "8"]  # fmt: skip
    kill_midway(args, output, output_format)
    assert not (output / "summary.json").exists(), "the run was not killed midway"
    everything_visible_loads(output)

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    everything_visible_loads(output)
    if output_format == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(output / "embeddings")
        listed = table.column("uri").to_pylist()
    else:
        listed = [row["uri"] for row in npy_index(output)]
        # The killed run's .npy files, which no index lists, are gone.
        assert len(glob.glob(str(output / "embeddings" / "*" / "*.npy"))) == IMAGES
    # The killed run's folder and temporary files are gone.
    assert not (output / "_runs").exists()
    assert not glob.glob(str(output / "**" / "beam-temp-*"), recursive=True)
    assert sorted(listed) == sorted(uris), "every input exactly once"
    assert summary(output)["reconciled"]
