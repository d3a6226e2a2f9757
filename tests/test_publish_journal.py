"""A publish stopped at any step, on real runs: whoever comes next (a --skip_existing
rerun, a search) finishes it from the journal, and folder readers then see exactly one
run's rows, each URI once, with summary.json naming the runs whose files are there."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from publish_faults import Stopped, stop_publish_at
from support import PHOTO_PATHS, run_cli, write_csv

from pipeline import job
from pipeline.run.lease import take_lease
from pipeline.run.publish import PublishFn
from pipeline.search.recorded import read_recorded
from pipeline.search.scan import shard_paths

pytestmark = pytest.mark.pipeline_run

PHOTOS = PHOTO_PATHS[:4]
# Cheap runs: the model is not what this proves.
FLAGS = ("--weights", "random", "--engine", "tensorflow", "--precision", "float32")


@dataclasses.dataclass
class Interrupted:
    """An output that run A published, with run B's files staged and B's publish about
    to begin: B's publish step's arguments, to replay on a copy."""

    folder: Path
    plan: object
    summary: dict
    staged: list[str]

    def copy_to(self, folder: Path) -> tuple[Path, PublishFn, list[str]]:
        shutil.copytree(self.folder, folder)
        old, new = str(self.folder), str(folder)
        target = dataclasses.replace(self.plan.target, output=new)
        plan = dataclasses.replace(self.plan, target=target)
        staged = [path.replace(old, new, 1) for path in self.staged]
        # B still holds the output (its process is this one), as when it was stopped.
        take_lease(new, plan.run_id, time.time(), runner="FnApiRunner", process_bound=True)
        return folder, PublishFn(plan, fail_job=False), staged


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Interrupted:
    root = tmp_path_factory.mktemp("journal")
    catalogue = write_csv(root / "photos.csv", PHOTOS)
    output = root / "out"
    first = run_cli("--input", str(catalogue), "--output", str(output), *FLAGS)
    assert first.returncode == 0, first.stderr[-3000:]
    seen: list = []
    process = PublishFn.process

    def stop_before_publishing(self, unused, summary, staged, bigquery=None):
        seen.append((self._plan, summary, list(staged)))
        raise Stopped
        yield  # a generator, as the real one

    PublishFn.process = stop_before_publishing
    try:
        with pytest.raises(BaseException, match="Stopped"):  # Beam wraps it
            job.run(["--input", str(catalogue), "--output", str(output), *FLAGS])
    finally:
        PublishFn.process = process
    [(plan, summary, staged)] = seen
    return Interrupted(output, plan, summary, staged)


def folder_rows(output: Path) -> tuple[list[str], set[str]]:
    """The URIs and run ids a folder reader of embeddings/ sees (pyarrow and DuckDB)."""
    import duckdb

    table = pq.read_table(output / "embeddings")
    glob = str(output / "embeddings" / "*.parquet")
    duck = sorted(
        row[0] for row in duckdb.sql(f"SELECT uri FROM read_parquet('{glob}')").fetchall()
    )
    uris = table.column("uri").to_pylist()
    assert sorted(uris) == duck
    return uris, set(table.column("run_id").to_pylist())


@pytest.mark.parametrize(
    ("step", "next_comer"),
    [
        ("after the journal", "a search"),
        ("after some renames", "a search"),
        ("after all renames", "a --skip_existing rerun"),
        ("during the deletes", "a --skip_existing rerun"),
    ],
)
def test_a_stopped_publish_is_finished_by_whoever_comes_next(
    step, next_comer, interrupted, tmp_path, monkeypatch
):
    output, publish_fn, staged = interrupted.copy_to(tmp_path / "out")
    first_run = json.loads((output / "summary.json").read_text())["run_id"]
    second_run = interrupted.summary["run_id"]
    earlier_shard = next((output / "embeddings").glob(f"embeddings-{first_run}-*.parquet")).name
    with monkeypatch.context() as faults:
        stop_publish_at(step, faults, undeletable=earlier_shard)
        with contextlib.suppress(Stopped):
            list(publish_fn.process(None, interrupted.summary, staged))
    assert (output / "_publish.json").exists()

    if next_comer == "a search":
        recorded = read_recorded(str(output))
        assert recorded.runs == (second_run,)
        assert [Path(path).name for path in shard_paths(recorded)] == sorted(
            Path(path).name for path in staged if "/embeddings/" in path
        )
    else:
        # A killed run leaves its lease; one whose deletes failed gave it back.
        takeover = ("--break_lease", second_run) if step != "during the deletes" else ()
        rerun = run_cli(
            "--input", str(write_csv(tmp_path / "photos.csv", PHOTOS)),
            "--output", str(output), "--skip_existing", *takeover, *FLAGS,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "finishing the publish of run" in rerun.stderr
        rerun_summary = json.loads((output / "summary.json").read_text())
        assert rerun_summary["skipped_existing"] == len(PHOTOS)
        assert rerun_summary["embedding_runs"][0] == second_run

    assert not (output / "_publish.json").exists() and not (output / "_runs").exists()
    uris, runs = folder_rows(output)
    assert sorted(uris) == sorted(PHOTOS), "each image once"
    assert runs == {second_run}
    summary = json.loads((output / "summary.json").read_text())
    assert second_run in summary["embedding_runs"] and first_run not in summary["embedding_runs"]
