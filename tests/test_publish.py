"""A run publishes only what passed: a failed run leaves the earlier output exactly as it
was, and readers never see a run that is still writing."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from support import (
    PHOTO_PATHS,
    REPO,
    failed_run_record,
    many_photos,
    run_cli,
    snapshot,
    summary,
    write_csv,
)

from pipeline.job import build_pipeline
from pipeline.local_runner import use_local_runner_defaults
from pipeline.options import EmbeddingOptions, parse_options
from pipeline.outputs.naming import new_run_id
from pipeline.run.lease import take_lease

pytestmark = pytest.mark.pipeline_run

# Every output a run can write to a local folder.
EVERY_OUTPUT = ("--weights", "random", "--neighbors", "3", "--duplicate_threshold", "0.99", "--map")


def outside_runs(files: dict[str, str]) -> dict[str, str]:
    return {name: digest for name, digest in files.items() if "_runs" not in name.split("/")}


def failing_catalogue(tmp_path: Path) -> Path:
    """Three photographs and three missing files (50% failed)."""
    missing = [str(tmp_path / f"missing-{index}.png") for index in range(3)]
    return write_csv(tmp_path / "bad.csv", [*PHOTO_PATHS[:3], *missing])


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory) -> Callable[[str, Path], None]:
    """copy(output_format, folder): a passed run's every output over every photograph
    (out/ and vectors/), made once per format and copied into folder for a test to
    replace."""
    made: dict[str, Path] = {}

    def copy(output_format: str, folder: Path) -> None:
        if output_format not in made:
            root = tmp_path_factory.mktemp(f"first-{output_format}")
            first = run_cli(
                "--input", str(write_csv(root / "good.csv", PHOTO_PATHS)),
                "--output", str(root / "out"), "--output_format", output_format,
                "--vector_search_output", str(root / "vectors"), *EVERY_OUTPUT,
            )  # fmt: skip
            assert first.returncode == 0, first.stderr[-3000:]
            made[output_format] = root
        for name in ("out", "vectors"):
            shutil.copytree(made[output_format] / name, folder / name)

    return copy


@pytest.mark.parametrize("output_format", ["parquet", "npy"])
def test_a_failed_replace_run_leaves_the_earlier_output_byte_identical(
    output_format, tmp_path, first_runs
):
    bad = failing_catalogue(tmp_path)
    output, vectors = tmp_path / "out", tmp_path / "vectors"
    args = ("--output", str(output), "--output_format", output_format,
            "--vector_search_output", str(vectors), *EVERY_OUTPUT)  # fmt: skip
    first_runs(output_format, tmp_path)
    before = snapshot(tmp_path)
    kinds = ("summary.json", "map.png", "report.html", "failures-", "neighbors-",
             "duplicates-", "map-coordinates-", "vectors/vectors-", "embeddings/")  # fmt: skip
    for kind in kinds:
        assert any(kind in name for name in before), f"the first run wrote no {kind}"

    failed = run_cli("--input", str(bad), *args, "--max_failures", "0")
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "3 of 6 inputs failed" in failed.stderr
    after = snapshot(tmp_path)
    assert outside_runs(after) == before, "the failed run changed the earlier output"

    kept, failures = failed_run_record(output)
    assert (kept["status"], kept["embedded"], kept["failed"]) == ("failed", 3, 3)
    assert kept["run_id"] != summary(output)["run_id"]
    assert "3 of 6 inputs failed" in kept["failure_reason"]
    assert kept["outputs"]["failures"].startswith(str(output / "_runs" / kept["run_id"]))
    assert sorted(record["error_type"] for record in failures) == ["FileNotFoundError"] * 3
    # Nothing else of the failed run is left: no staged shard, no temporary file.
    left = [name for name in after if "_runs" in name.split("/")]
    assert all(name.endswith(("summary.json", ".jsonl")) for name in left), left


def test_a_job_that_fails_its_check_publishes_nothing(tmp_path, first_runs):
    """As on Dataflow, where the verdict fails the job itself (fail_job=True)."""
    bad = failing_catalogue(tmp_path)
    output = tmp_path / "out"
    first_runs("parquet", tmp_path)
    before = snapshot(output)

    argv = ["--input", str(bad), "--output", str(output), *EVERY_OUTPUT, "--max_failures", "0"]
    options = parse_options(argv)
    use_local_runner_defaults(options, argv, small_input=True)
    started_at = time.time()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(
        pipeline,
        options.view_as(EmbeddingOptions),
        new_run_id(started_at),
        started_at,
        fail_job=True,
    )
    with pytest.raises(Exception, match="3 of 6 inputs failed"):
        pipeline.run().wait_until_finish()

    assert outside_runs(snapshot(output)) == before
    kept, failures = failed_run_record(output)
    assert kept["status"] == "failed"
    # The dead letter was finished before the verdict: final shards, no temporary folder.
    assert len(failures) == 3
    assert not glob.glob(str(output / "**" / "beam-temp-*"), recursive=True)


def folder_readers(output: Path) -> dict[str, list[str]]:
    """The URIs that pyarrow and DuckDB read from the embeddings folder."""
    import duckdb

    table = pq.read_table(output / "embeddings")
    query = f"SELECT uri FROM read_parquet('{output}/embeddings/*.parquet')"
    return {
        "pyarrow": sorted(table.column("uri").to_pylist()),
        "duckdb": sorted(row[0] for row in duckdb.sql(query).fetchall()),
    }


def test_folder_readers_see_the_earlier_rows_while_a_run_writes(tmp_path):
    uris = many_photos(tmp_path / "photos", 40)
    output = tmp_path / "out"
    first = run_cli("--input", str(write_csv(tmp_path / "first.csv", uris[:5])),
                    "--output", str(output), "--weights", "random")  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = {"pyarrow": sorted(uris[:5]), "duckdb": sorted(uris[:5])}
    assert folder_readers(output) == earlier

    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--input", str(write_csv(tmp_path / "all.csv", uris)),
         "--output", str(output), "--weights", "random", "--min_batch_size", "1",
         "--max_batch_size", "4"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    staged = output / "_runs" / "*" / "embeddings" / "**" / "*.parquet*"
    try:
        deadline = time.monotonic() + 300
        while not glob.glob(str(staged), recursive=True):
            assert process.poll() is None, "the run ended before it was seen writing"
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            assert folder_readers(output) == earlier
            assert json.loads((output / "summary.json").read_text())["embedded"] == 5
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert folder_readers(output) == {"pyarrow": sorted(uris), "duckdb": sorted(uris)}
    assert not (output / "_runs").exists()


def test_a_run_on_a_leased_output_is_refused_and_a_stale_lease_is_broken(tmp_path):
    output = tmp_path / "out"
    two = write_csv(tmp_path / "two.csv", PHOTO_PATHS[:2])
    args = ("--input", str(two), "--output", str(output), "--weights", "random")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (output / "_lease.json").exists(), "a finished run keeps its lease"

    holder = "20261201T000000-abcdef"  # a job still running on Dataflow
    take_lease(str(output), holder, time.time(), runner="DataflowRunner job nightly")
    before = snapshot(output)
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    [line] = [line for line in refused.stderr.splitlines() if line.strip()]
    assert f"run {holder} holds this output" in line
    assert "runner DataflowRunner job nightly" in line
    assert snapshot(output) == before, "a refused run changed the output or the lease"

    (output / "_lease.json").unlink()
    take_lease(str(output), holder, time.time() - 49 * 3600, runner="DataflowRunner job nightly")
    taken_over = run_cli(*args)
    assert taken_over.returncode == 0, taken_over.stderr[-3000:]
    assert f"breaking the lease of run {holder}" in taken_over.stderr
    assert summary(output)["run_id"] != holder
    assert not (output / "_lease.json").exists()
