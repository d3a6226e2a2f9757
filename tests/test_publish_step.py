"""The Publish step on its own: it publishes only while the run holds the output, a
retried bundle finds its work done, and what crashed runs left is kept where listed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from publish_faults import STEPS, Stopped, stop_publish_at

from pipeline.options import UsageError, parse_options
from pipeline.outputs import (
    FileKind,
    JournalError,
    OptionalOutput,
    RunTarget,
    current_runs,
    every_file_kind,
    roll_forward,
)
from pipeline.run.lease import release_lease, take_lease
from pipeline.run.publish import PublishFn, PublishPlan

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
    plan = PublishPlan(RunTarget(str(output), RUN), incremental)
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


def test_with_skip_existing_the_npy_files_of_the_summarys_runs_stay_and_others_go(tmp_path):
    output = tmp_path / "out"
    # An earlier run the summary names, and a run killed while it wrote (a stray index
    # file, its .npy files and its folder) that it does not.
    stray = "20261201T080000-cccccc"
    for run in (OTHER, stray):
        index = output / f"embeddings-index-{run}-00000-of-00001.csv"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(f"uri,file,width,height,datapoint_id\n{run},{run}/x.npy,1,1,a\n")
        npy = output / "embeddings" / run / "x.npy"
        npy.parent.mkdir(parents=True)
        npy.write_bytes(b"npy")
    (output / "_runs" / stray / "embeddings").mkdir(parents=True)
    (output / "summary.json").write_text(json.dumps({"run_id": OTHER, "embedding_runs": [OTHER]}))
    staged = staged_shard(output)
    take_lease(str(output), RUN, time.time(), runner="FnApiRunner")
    earlier = current_runs(str(output), "npy")
    assert earlier == (OTHER,)
    plan = PublishPlan(RunTarget(str(output), RUN, "npy", earlier), incremental=True)
    [summary] = PublishFn(plan, fail_job=False).process(None, passing_summary(output), [staged])
    assert summary["status"] == "passed" and summary["embedding_runs"] == [OTHER, RUN]
    assert (output / "embeddings" / OTHER / "x.npy").read_bytes() == b"npy"
    assert (output / f"embeddings-index-{OTHER}-00000-of-00001.csv").exists()
    assert not (output / "embeddings" / stray).exists()
    assert not list(output.glob(f"embeddings-index-{stray}-*"))
    assert not (output / "_runs").exists() and not (output / "_publish.json").exists()


# --- The journal: a publish stopped at any step is finished by whoever comes next -----


def earlier_output(output: Path) -> list[str]:
    """A published run OTHER (two kinds of shard, a map), and RUN's staged files."""
    for name in (
        f"embeddings/embeddings-{OTHER}-00000-of-00001.parquet",
        f"failures-{OTHER}-00000-of-00001.jsonl",
        "map.png",
    ):
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_bytes(OTHER.encode())
    (output / "summary.json").write_text(json.dumps({"run_id": OTHER, "embedding_runs": [OTHER]}))
    staged = []
    for name in (
        f"embeddings/embeddings-{RUN}-00000-of-00002.parquet",
        f"embeddings/embeddings-{RUN}-00001-of-00002.parquet",
        f"failures-{RUN}-00000-of-00001.jsonl",
    ):
        path = output / "_runs" / RUN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(RUN.encode())
        staged.append(str(path))
    return staged


def published_state(output: Path) -> tuple[str, set[str]]:
    files = {
        str(path.relative_to(output))
        for path in output.rglob("*")
        if path.is_file() and path.name != "_lease.json"
    }
    return json.loads((output / "summary.json").read_text())["run_id"], files


ONLY_RUN = {
    f"embeddings/embeddings-{RUN}-00000-of-00002.parquet",
    f"embeddings/embeddings-{RUN}-00001-of-00002.parquet",
    f"failures-{RUN}-00000-of-00001.jsonl",
    "summary.json",
}


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("finisher", ["the retried bundle", "a reader", "the next run"])
def test_a_publish_stopped_at_any_step_is_finished_by_whoever_comes_next(
    step, finisher, tmp_path, monkeypatch
):
    output = tmp_path / "out"
    staged = earlier_output(output)
    take_lease(str(output), RUN, time.time(), runner="FnApiRunner")
    with monkeypatch.context() as faults:
        stop_publish_at(step, faults, undeletable=f"embeddings-{OTHER}-00000-of-00001.parquet")
        if step == "during the deletes":
            left = publish(output, staged)
            assert left["run_id"] == RUN  # published; the journal keeps the deletes
            # Readers of summary.json already see only RUN's files.
            assert published_state(output)[0] == RUN
        else:
            with pytest.raises(Stopped):
                publish(output, staged)
            # Until the journal is finished, summary.json names a run whose files are all out.
            named = json.loads((output / "summary.json").read_text())["run_id"]
            shards = len(list((output / "embeddings").glob(f"embeddings-{named}-*.parquet")))
            assert shards == (1 if named == OTHER else 2)
    assert (output / "_publish.json").exists()
    if finisher == "the retried bundle":
        publish(output, staged)
    elif finisher == "a reader":
        assert roll_forward(str(output)) == RUN
        # The stopped bundle, retried after the reader finished it, gives the lease back.
        assert publish(output, staged)["run_id"] == RUN
        assert not (output / "_lease.json").exists()
    else:
        release_lease(str(output), RUN)
        nxt = "20261201T110000-dddddd"
        take_lease(str(output), nxt, time.time(), runner="FnApiRunner")
        assert roll_forward(str(output)) == RUN  # job.run does this before anything else
        assert current_runs(str(output), "parquet") == (RUN,)
        release_lease(str(output), nxt)
    assert published_state(output) == (RUN, ONLY_RUN)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "passed" and summary["embedding_runs"] == [RUN]


def test_a_journal_that_names_a_path_outside_the_output_is_refused(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for replaced in (["../victim.txt"], ["a/../../victim.txt"], [str(victim)]):
        journal = {
            "run_id": RUN, "staged": [], "replaced": replaced, "replaced_vectors": [],
            "vector_folder": None, "npy_metadata": None, "summary": {"run_id": RUN},
        }  # fmt: skip
        (output / "_publish.json").write_text(json.dumps(journal))
        with pytest.raises(JournalError, match="not a name inside the folder"):
            roll_forward(str(output))
        assert victim.read_text() == "keep"
    journal["replaced"], journal["vector_folder"] = [], str(tmp_path)
    journal["replaced_vectors"] = ["victim.txt"]
    (output / "_publish.json").write_text(json.dumps(journal))
    with pytest.raises(JournalError, match="not a name a run writes in a vector folder"):
        roll_forward(str(output))
    assert victim.read_text() == "keep"


def test_the_vector_search_folder_must_be_on_the_outputs_storage(tmp_path):
    with pytest.raises(UsageError, match="must be on the same storage"):
        parse_options(["--input", "x.csv", "--output", str(tmp_path / "out"),
                       "--vector_search_output", "gs://b/vectors"])  # fmt: skip


def test_an_output_publish_never_heard_of_has_its_earlier_files_replaced(tmp_path, monkeypatch):
    """Declaring the kind of file it publishes is all a new optional output does: publish
    asks the outputs, and keeps no list of its own."""
    from pipeline.outputs import optional

    monkeypatch.setattr(optional, "_DEFINED", list(optional._DEFINED))  # defined for this test
    output = tmp_path / "out"
    earlier = output / f"thumbnails-{OTHER}-00000-of-00001.zip"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"earlier")
    ours = output / "_runs" / RUN / f"thumbnails-{RUN}-00000-of-00001.zip"
    staged = [staged_shard(output), str(ours)]
    ours.write_bytes(b"this run's")
    kind = FileKind("thumbnails", ".zip")
    assert kind not in every_file_kind()

    class Thumbnails(OptionalOutput):
        name = "thumbnails"
        step = "Thumbnails"
        file_kinds = (kind,)

    assert kind in every_file_kind()
    take_lease(str(output), RUN, time.time(), runner="FnApiRunner")
    assert publish(output, staged)["status"] == "passed"
    assert not earlier.exists()
    assert (output / f"thumbnails-{RUN}-00000-of-00001.zip").read_bytes() == b"this run's"
