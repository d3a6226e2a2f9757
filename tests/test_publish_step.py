"""The Publish step on its own: it publishes only while the run holds the output, a
retried bundle finds its work done, and what crashed runs left is kept where listed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.lease import release_lease, take_lease
from pipeline.options import UsageError, parse_options
from pipeline.publish import PublishFn, PublishPlan

RUN = "20261201T100000-aaaaaa"
OTHER = "20261201T090000-bbbbbb"


def passing_summary(output: Path) -> dict:
    return {
        "run_id": RUN,
        "input": "images.csv",
        "rows_read": 1,
        "embedded": 1,
        "failed": 0,
        "duplicates_dropped": 0,
        "skipped_existing": 0,
        "reconciled": True,
        "failure_fraction": 0.0,
        "max_failure_fraction": 0.05,
        "outputs": {"failures": str(output / "failures-*.jsonl")},
    }


def staged_shard(output: Path, run_id: str = RUN) -> str:
    shard = output / "_runs" / run_id / "embeddings" / f"embeddings-{run_id}-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"rows")
    return str(shard)


def publish(output: Path, staged: list[str], incremental: bool = False) -> dict:
    plan = PublishPlan(str(output), RUN, incremental, "parquet")
    [summary] = PublishFn(plan, fail_job=False).process(None, passing_summary(output), staged)
    return summary


def test_a_run_whose_lease_was_taken_over_publishes_nothing(tmp_path):
    output = tmp_path / "out"
    staged = staged_shard(output)
    take_lease(str(output), OTHER, time.time(), runner="FnApiRunner")
    summary = publish(output, [staged])
    assert summary["status"] == "failed"
    assert f"run {RUN} no longer holds" in summary["failure_reason"]
    assert f"run {OTHER} holds it now" in summary["failure_reason"]
    assert not (output / "embeddings").exists() and not (output / "summary.json").exists()
    assert json.loads((output / "_lease.json").read_text())["run_id"] == OTHER


def test_a_retried_publish_finds_its_work_done(tmp_path):
    output = tmp_path / "out"
    staged = staged_shard(output)
    take_lease(str(output), RUN, time.time(), runner="FnApiRunner")
    first = publish(output, [staged])
    assert first["status"] == "passed" and not (output / "_lease.json").exists()
    # The bundle runs again: the staged file is gone, the lease given back.
    again = publish(output, [staged])
    assert again == first
    shard = output / "embeddings" / Path(staged).name
    assert shard.read_bytes() == b"rows"


def test_the_npy_files_of_a_run_killed_while_it_published_stay_while_listed(tmp_path):
    output = tmp_path / "out"
    # Killed midway through publishing: one index file out, its folder not yet removed.
    index = output / f"embeddings-index-{OTHER}-00000-of-00002.csv"
    index.parent.mkdir(parents=True)
    index.write_text("uri,file,width,height,datapoint_id\na,x.npy,1,1,a\n")
    (output / "_runs" / OTHER / "embeddings").mkdir(parents=True)
    npy = output / "embeddings" / OTHER / "x.npy"
    npy.parent.mkdir(parents=True)
    npy.write_bytes(b"npy")
    staged = staged_shard(output)
    take_lease(str(output), RUN, time.time(), runner="FnApiRunner")
    plan = PublishPlan(str(output), RUN, True, "npy")
    [summary] = PublishFn(plan, fail_job=False).process(None, passing_summary(output), [staged])
    assert summary["status"] == "passed"
    assert npy.read_bytes() == b"npy", "a published index file lists it"
    assert not (output / "_runs" / OTHER).exists()
    release_lease(str(output), RUN)


def test_the_vector_search_folder_must_be_on_the_outputs_storage(tmp_path):
    with pytest.raises(UsageError, match="must be on the same storage"):
        parse_options(["--input", "x.csv", "--output", str(tmp_path / "out"),
                       "--vector_search_output", "gs://b/vectors"])  # fmt: skip
