"""One run per output: the lease, on a local folder and on gs:// (emulator), raced too."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from cloud import MetadataServer, PreconditionProxy, emulator_client, storage_emulator

from pipeline.options import LEASE_STALE_AFTER_HOURS, UsageError
from pipeline.outputs.naming import LEASE, new_run_id
from pipeline.run.lease import LeaseHeldError, read_lease, release_lease, take_lease

BUCKET = "lease-bucket"
HOUR = 3600.0


@dataclass
class Output:
    """An output prefix, and its lease file's bytes read without the module under test."""

    path: str
    lease_bytes: Callable[[], bytes | None]


@pytest.fixture(scope="module")
def gcs():
    """An emulated bucket behind a proxy that enforces generation preconditions; the
    metadata server stand-in gives credentials at once, as on Dataflow."""
    metadata = MetadataServer()
    with storage_emulator(BUCKET) as emulator:
        proxy = PreconditionProxy(emulator)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
            for name, value in metadata.environment.items():
                patch.setenv(name, value)
            yield {"client": emulator_client(emulator), "proxy": proxy}
        proxy.close()
    metadata.close()


@pytest.fixture(params=["local", "gs"])
def output(request, tmp_path) -> Output:
    if request.param == "local":
        folder = tmp_path / "out"
        lease = folder / LEASE
        return Output(str(folder), lambda: lease.read_bytes() if lease.exists() else None)
    gcs = request.getfixturevalue("gcs")
    prefix = f"runs/{uuid.uuid4().hex}"
    blob = gcs["client"].bucket(BUCKET).blob(f"{prefix}/{LEASE}")
    return Output(
        f"gs://{BUCKET}/{prefix}", lambda: blob.download_as_bytes() if blob.exists() else None
    )


def run_id(hours_ago: float = 0.0) -> tuple[str, float]:
    started_at = time.time() - hours_ago * HOUR
    return new_run_id(started_at), started_at


def take(output: Output, hours_ago: float = 0.0, **kwargs) -> str:
    """Takes the lease for a new run that started hours_ago; returns its run id."""
    run, started_at = run_id(hours_ago)
    take_lease(output.path, run, started_at, runner="FnApiRunner", **kwargs)
    return run


def test_a_free_output_is_leased_to_the_run_with_who_and_when(output):
    run, started_at = run_id()
    take_lease(output.path, run, started_at, runner="DataflowRunner job nightly")
    stored = json.loads(output.lease_bytes())
    assert stored == read_lease(output.path)
    assert stored["run_id"] == run
    assert stored["started_at_epoch"] == started_at
    assert stored["started_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at))
    assert stored["stale_after_s"] == LEASE_STALE_AFTER_HOURS * HOUR == 48 * HOUR
    assert stored["runner"] == "DataflowRunner job nightly"
    assert stored["host"] and stored["user"] and stored["pid"] == os.getpid()


def test_a_second_run_is_refused_naming_the_holder_and_the_lease_stays_as_it_was(output):
    first = take(output, hours_ago=2.5)
    before = output.lease_bytes()
    with pytest.raises(LeaseHeldError) as refused:
        take(output)
    message = str(refused.value)
    assert isinstance(refused.value, UsageError)  # the CLI's exit 2
    assert "\n" not in message
    assert f"run {first} holds this output" in message
    assert read_lease(output.path)["started_at"] in message
    assert "2.5 h ago" in message
    assert f"--break_lease {first}" in message and "48 h after its start" in message
    assert output.lease_bytes() == before


def test_a_stale_lease_is_taken_over_with_a_warning_naming_its_holder(output, caplog):
    crashed = take(output, hours_ago=LEASE_STALE_AFTER_HOURS + 1)
    caplog.set_level(logging.WARNING, logger="pipeline.run.lease")
    run = take(output)
    assert read_lease(output.path)["run_id"] == run
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"breaking the lease of run {crashed}" in warning and "stale" in warning
    assert f"run {run} takes it" in warning


def test_the_holders_own_stale_age_decides(output):
    long_run = take(output, hours_ago=50, stale_after_s=72 * HOUR)
    with pytest.raises(LeaseHeldError, match="72 h after its start"):
        take(output)  # this run's own default is 48 h, but the holder asked for 72
    assert read_lease(output.path)["run_id"] == long_run
    release_lease(output.path, long_run)
    short_run = take(output, hours_ago=2, stale_after_s=HOUR)
    assert take(output, stale_after_s=100 * HOUR) != short_run
    assert read_lease(output.path)["stale_after_s"] == 100 * HOUR


def test_break_lease_breaks_only_the_run_it_names(output, caplog):
    holder = take(output)
    before = output.lease_bytes()
    other, _ = run_id(hours_ago=1)
    with pytest.raises(LeaseHeldError) as refused:
        take(output, break_lease=other)
    assert f"--break_lease {other} names another run" in str(refused.value)
    assert f"run {holder} holds" in str(refused.value)
    assert output.lease_bytes() == before
    caplog.set_level(logging.WARNING, logger="pipeline.run.lease")
    breaker = take(output, break_lease=holder)
    assert read_lease(output.path)["run_id"] == breaker
    assert any(f"run {holder}" in r.getMessage() and "--break_lease" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def race(output: Output, takers: int = 8) -> tuple[list[str], dict[str, str]]:
    """Starts takers at once; returns the winners and each loser's refusal."""
    runs = [run_id()[0] + f"{i}" for i in range(takers)]
    barrier = threading.Barrier(takers)
    won: list[str] = []
    refused: dict[str, str] = {}

    def attempt(run: str) -> None:
        barrier.wait()
        try:
            take_lease(output.path, run, time.time(), runner="FnApiRunner")
            won.append(run)
        except LeaseHeldError as error:
            refused[run] = str(error)

    threads = [threading.Thread(target=attempt, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) + len(refused) == takers
    return won, refused


def test_of_runs_racing_for_a_free_output_exactly_one_wins(output):
    won, refused = race(output)
    assert len(won) == 1
    assert read_lease(output.path)["run_id"] == won[0]
    assert all(f"run {won[0]} holds" in message for message in refused.values())


def test_of_runs_racing_to_break_a_stale_lease_exactly_one_wins(output):
    crashed = take(output, hours_ago=LEASE_STALE_AFTER_HOURS + 1)
    won, refused = race(output)
    assert len(won) == 1
    holder = read_lease(output.path)["run_id"]
    assert holder == won[0] != crashed
    assert all(f"run {holder} holds" in message for message in refused.values())


def test_a_release_by_another_run_leaves_the_lease(output, caplog):
    holder = take(output)
    before = output.lease_bytes()
    caplog.set_level(logging.INFO, logger="pipeline.run.lease")
    other, _ = run_id()
    release_lease(output.path, other)
    assert output.lease_bytes() == before
    assert any(f"run {other} has no lease to release (run {holder} holds it)" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_releasing_twice_is_harmless_and_frees_the_output(output):
    holder = take(output)
    release_lease(output.path, holder)
    assert output.lease_bytes() is None and read_lease(output.path) is None
    release_lease(output.path, holder)
    assert output.lease_bytes() is None
    next_run = take(output)
    assert read_lease(output.path)["run_id"] == next_run


def test_a_run_whose_stale_lease_was_broken_releases_nothing(output):
    crashed = take(output, hours_ago=LEASE_STALE_AFTER_HOURS + 1)
    successor = take(output)
    before = output.lease_bytes()
    release_lease(output.path, crashed)  # the old run finishing after all
    assert output.lease_bytes() == before
    assert read_lease(output.path)["run_id"] == successor


def test_the_same_run_taking_its_lease_again_keeps_it(output):
    run, started_at = run_id()
    take_lease(output.path, run, started_at, runner="FnApiRunner")
    before = output.lease_bytes()
    take_lease(output.path, run, started_at, runner="FnApiRunner")
    assert output.lease_bytes() == before


def test_a_missing_local_folder_is_created(tmp_path):
    folder = tmp_path / "new" / "out"
    run, started_at = run_id()
    take_lease(str(folder), run, started_at, runner="FnApiRunner")
    assert json.loads((folder / LEASE).read_text())["run_id"] == run
    assert [p.name for p in folder.iterdir()] == [LEASE]  # no partial file left


def test_an_unreadable_local_lease_is_refused_until_it_is_stale(tmp_path):
    lease = tmp_path / LEASE
    lease.write_bytes(b'{"run_id": "2026')  # a run killed while writing its lease
    output = Output(str(tmp_path), lease.read_bytes)
    with pytest.raises(LeaseHeldError) as refused:
        take(output)
    assert f"{lease} is unreadable (" in str(refused.value)
    assert f"delete {lease}" in str(refused.value)
    assert lease.read_bytes() == b'{"run_id": "2026'
    written = time.time() - (LEASE_STALE_AFTER_HOURS + 1) * HOUR
    os.utime(lease, (written, written))
    run = take(output)
    assert read_lease(str(tmp_path))["run_id"] == run


def test_other_schemes_are_refused_with_what_to_give():
    with pytest.raises(UsageError, match="only on a local folder or gs://"):
        take_lease("s3://bucket/out", "20261124T011106-3fa2c1", time.time(), runner="x")


def test_the_emulator_alone_ignores_generation_preconditions(gcs):
    """Why the tests reach the emulator through PreconditionProxy."""
    blob = gcs["client"].bucket(BUCKET).blob(f"bare/{uuid.uuid4().hex}")
    blob.upload_from_string(b"first", if_generation_match=0)
    blob.upload_from_string(b"second", if_generation_match=0)  # Cloud Storage: 412
    assert blob.download_as_bytes() == b"second", (
        "gcp-storage-emulator now honours ifGenerationMatch: PreconditionProxy can go"
    )


def test_a_broken_local_lease_leaves_no_other_file(tmp_path):
    output = Output(str(tmp_path), (tmp_path / LEASE).read_bytes)
    take(output, hours_ago=LEASE_STALE_AFTER_HOURS + 1)
    run = take(output)
    assert [p.name for p in tmp_path.iterdir()] == [LEASE]
    assert json.loads(output.lease_bytes())["run_id"] == run
