"""Publishing: a run's staged files become the output only once the run has passed.

Every writer puts its files in the run's own folder (OUTPUT/_runs/RUN/, laid out as the
output is). The Publish step waits for all of them (side inputs), takes the verdict, and:

- passed: moves the staged files to their final names, deletes the files they replace,
  writes summary.json last, removes the run's folder and releases the lease;
- failed: keeps the output exactly as it was, leaves the run's dead letter and a summary
  marked failed in the run's folder, and releases the lease.

Each act is idempotent, so a retried bundle finishes what an interrupted one began.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.common import read_json, write_json
from pipeline.lease import read_lease, release_lease
from pipeline.outputs import (
    COORDINATES,
    DUPLICATES,
    EMBEDDINGS,
    EMBEDDINGS_DIRECTORY,
    FAILURES,
    LEASE,
    LEGACY_EMBEDDINGS,
    LEGACY_SPILL,
    MAP_PNG,
    NEIGHBORS,
    NPY_INDEX,
    NPY_METADATA,
    REPORT_HTML,
    RUN_ID_PATTERN,
    RUNS,
    SUMMARY,
    VECTORS,
    matching_files,
    output_path,
    run_folder,
)
from pipeline.summary import RunFailedError, check

_LOG = logging.getLogger(__name__)

STAGED_VECTORS = "vectors"  # the Vector Search files' folder inside the run's folder


@dataclass(frozen=True)
class PublishPlan:
    """Where a run's files go, and which earlier files it keeps."""

    output: str
    run_id: str
    incremental: bool  # --skip_existing: earlier runs' embeddings stay
    output_format: str
    vector_folder: str | None = None
    npy_metadata: dict[str, Any] | None = None  # written beside an npy run's files

    @property
    def stage(self) -> str:
        return run_folder(self.output, self.run_id)

    def final_path(self, staged: str) -> str:
        """Where a staged file is published: the same relative name under the output,
        or directly in the Vector Search folder."""
        relative = staged[len(self.stage) :].lstrip("/")
        vectors = f"{STAGED_VECTORS}/"
        if self.vector_folder and relative.startswith(vectors):
            return output_path(self.vector_folder, relative[len(vectors) :])
        return output_path(self.output, relative)

    def npy_folder(self, run_id: str) -> str:
        """The folder an npy run writes its .npy files into, in place: readers find them
        only through an index file, which is published after the verdict."""
        return output_path(self.output, f"{EMBEDDINGS_DIRECTORY}/{run_id}")


def shard_pattern(base: str, suffix: str) -> re.Pattern:
    """BASE-RUN-SSSSS-of-NNNNN.SUFFIX, capturing the run id."""
    return re.compile(
        re.escape(base)
        + rf"-(?P<run>{RUN_ID_PATTERN})-\d{{5}}-of-\d{{5}}"
        + re.escape(suffix)
        + "$"
    )


class Shards:
    """One kind of run shards in one folder: how to find them, and each one's run."""

    def __init__(self, folder: str, name: str, suffix: str, kept_by_increments: bool = False):
        self.base = output_path(folder, name)
        self.suffix = suffix
        self.kept_by_increments = kept_by_increments
        self._pattern = shard_pattern(self.base, suffix)

    @property
    def glob(self) -> str:
        return f"{self.base}-*-of-*{self.suffix}"

    def run_of(self, path: str) -> str | None:
        found = self._pattern.match(path)
        return found["run"] if found else None


def published_shards(plan: PublishPlan) -> list[Shards]:
    """Every kind of shard a run publishes; each replaces the earlier runs' of its kind."""
    output = plan.output
    kinds = [
        Shards(output, EMBEDDINGS, ".parquet", kept_by_increments=True),
        Shards(output, LEGACY_EMBEDDINGS, ".parquet", kept_by_increments=True),
        Shards(output, NPY_INDEX, ".csv", kept_by_increments=True),
        Shards(output, FAILURES, ".jsonl"),
        Shards(output, NEIGHBORS, ".parquet"),
        Shards(output, DUPLICATES, ".csv"),
        Shards(output, COORDINATES, ".csv"),
    ]
    if plan.vector_folder:
        kinds.append(Shards(plan.vector_folder, VECTORS, ".json"))
    return kinds


def _delete(paths: list[str]) -> None:
    """Deletes what exists of paths (a folder with all it holds); a retry finds less."""
    for path in paths:
        try:
            FileSystems.delete([path])
        except Exception as error:
            if _still_there(path):
                raise
            _LOG.debug("already gone: %s (%s)", path, error)
        # Beam's recursive gs:// delete only logs the objects it could not delete.
        if path.endswith("/") and _still_there(path):
            raise OSError(f"{path}: some files could not be deleted; the step is retried")


def _still_there(path: str) -> bool:
    """Whether a file, or a folder (or object prefix) with anything in it, is there."""
    return FileSystems.exists(path.rstrip("/")) or bool(matching_files([f"{path.rstrip('/')}/**"]))


def _folder(path: str) -> str:
    """A folder as FileSystems.delete takes it: itself where there are folders, otherwise
    the prefix of everything under it."""
    has_dirs = FileSystems.get_filesystem(path).has_dirs()
    return path.rstrip("/") if has_dirs else path.rstrip("/") + "/"


def _move(pairs: list[tuple[str, str]]) -> None:
    """Renames each staged file that is still there (a retry skips the ones moved)."""
    todo = [(src, dst) for src, dst in pairs if FileSystems.exists(src)]
    if not todo:
        return
    for _, dst in todo:
        if FileSystems.get_filesystem(dst).has_dirs():
            os.makedirs(os.path.dirname(dst), exist_ok=True)
    FileSystems.rename([src for src, _ in todo], [dst for _, dst in todo])


def other_runs(output: str, run_id: str) -> dict[str, bool]:
    """Other runs' folders under _runs/: run id -> whether it holds a summary (a failed
    run's record); those without one are runs that crashed or were given up."""
    runs_folder = output_path(output, RUNS)
    folder = re.compile(re.escape(runs_folder) + rf"/(?P<run>{RUN_ID_PATTERN})/(?P<rest>.+)$")
    found: dict[str, bool] = {}
    for path in matching_files([f"{runs_folder}/**"]):
        match = folder.match(path)
        if match and match["run"] != run_id:
            found[match["run"]] = found.get(match["run"], False) or match["rest"] == SUMMARY
    return found


def leftovers(plan: PublishPlan) -> list[str]:
    """What runs of earlier versions or crashed runs left where readers look: Beam's
    temporary folders beside the shards, top-level spill files, abandoned run folders
    (and their .npy files) that started before this run."""
    output = plan.output
    folders = [output, output_path(output, EMBEDDINGS_DIRECTORY)]
    if plan.vector_folder:
        folders.append(plan.vector_folder)
    temp = re.compile(r"(?P<folder>.*/beam-temp-[^/]+)/")
    found = set()
    for folder in folders:
        for path in matching_files([output_path(folder, "beam-temp-*/**")]):
            match = temp.match(path)
            if match:
                found.add(_folder(match["folder"]))
    found.update(matching_files([output_path(output, f"{LEGACY_SPILL}-*.spill")]))
    index = Shards(output, NPY_INDEX, ".csv")
    published_runs = {index.run_of(path) for path in matching_files([index.glob])}
    for run, has_summary in other_runs(output, plan.run_id).items():
        if not has_summary and run < plan.run_id:
            found.add(_folder(run_folder(output, run)))
            # A run killed while it published may have index files out that list them.
            if run not in published_runs and _still_there(plan.npy_folder(run)):
                found.add(_folder(plan.npy_folder(run)))
    return sorted(found)


def replaced(plan: PublishPlan, published: set[str]) -> list[str]:
    """The files (and npy run folders) that the run's published files replace."""
    gone: list[str] = []
    npy_runs: set[str] = set()
    for kind in published_shards(plan):
        if plan.incremental and kind.kept_by_increments:
            continue
        for path in matching_files([kind.glob]):
            run = kind.run_of(path)
            if run and run != plan.run_id and path not in published:
                gone.append(path)
                if kind.base.endswith(NPY_INDEX):
                    npy_runs.add(run)
    for name in (MAP_PNG, REPORT_HTML):
        path = output_path(plan.output, name)
        if path not in published and FileSystems.exists(path):
            gone.append(path)
    if not plan.incremental:
        # .npy files an earlier version wrote directly in embeddings/, listed by the
        # index files this run replaces.
        gone += matching_files([output_path(plan.output, f"{EMBEDDINGS_DIRECTORY}/*.npy")])
    for run in sorted(npy_runs):
        if _still_there(plan.npy_folder(run)):
            gone.append(_folder(plan.npy_folder(run)))
    return gone


def verdict(summary: dict[str, Any], bigquery: dict[str, Any] | None) -> str | None:
    """Why the run fails, or None when it passes."""
    try:
        check(summary)
    except RunFailedError as error:
        return str(error)
    if bigquery and bigquery.get("error"):
        return f"the BigQuery load failed: {bigquery['error']}"
    return None


def lease_lost(output: str, run_id: str) -> str | None:
    """Why the run may not publish because another run holds the output, or None."""
    holder = read_lease(output)
    if holder is not None and holder.get("run_id") == run_id:
        return None
    held = f"run {holder.get('run_id')} holds it now" if holder else "nobody holds it"
    return (
        f"run {run_id} no longer holds {output_path(output, LEASE)} ({held}; its lease "
        "went stale or was broken), so it publishes nothing: the output is that run's"
    )


class PublishFn(beam.DoFn):
    """Publishes the staged files, or keeps the output as it was; yields the summary."""

    def __init__(self, plan: PublishPlan, fail_job: bool):
        self._plan = plan
        self._fail_job = fail_job

    def process(self, unused, summary, staged, bigquery=None):
        plan = self._plan
        published = read_json(output_path(plan.output, SUMMARY))
        if published and published.get("run_id") == plan.run_id:
            yield published  # a retried bundle: this run published, and gave the lease back
            return
        if bigquery is not None:
            summary = {**summary, "bigquery": bigquery}
        failed = self._failed_summary(summary)
        reason = verdict(failed, bigquery) or lease_lost(plan.output, plan.run_id)
        if reason is None:
            yield self._publish(summary, staged)
        else:
            yield self._keep_earlier({**failed, "failure_reason": reason})

    def _publish(self, summary: dict[str, Any], staged: list[str]) -> dict[str, Any]:
        plan = self._plan
        pairs = [(path, plan.final_path(path)) for path in sorted(set(staged))]
        _move(pairs)
        if plan.output_format == "npy" and plan.npy_metadata is not None:
            write_json(output_path(plan.npy_folder(plan.run_id), NPY_METADATA), plan.npy_metadata)
        published = {final for _, final in pairs}
        gone = replaced(plan, published) + leftovers(plan)
        _LOG.info("publishing %d files, removing %d replaced", len(published), len(gone))
        _delete(gone)
        summary = {**summary, "status": "passed"}
        # Last: summary.json names the run whose files the output now holds.
        write_json(output_path(plan.output, SUMMARY), summary)
        _delete([_folder(plan.stage)])
        runs = output_path(plan.output, RUNS)
        if FileSystems.get_filesystem(runs).has_dirs() and not matching_files([f"{runs}/**"]):
            _delete([runs])  # an empty folder, where there are folders
        release_lease(plan.output, plan.run_id)
        return summary

    def _failed_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary as a failed run keeps it: its dead letter stays in its folder."""
        kept = {
            "failures": output_path(self._plan.stage, f"{FAILURES}-*.jsonl"),
            "summary": output_path(self._plan.stage, SUMMARY),
        }
        return {**summary, "status": "failed", "outputs": {**summary["outputs"], **kept}}

    def _keep_earlier(self, summary: dict[str, Any]) -> dict[str, Any]:
        plan = self._plan
        reason = summary["failure_reason"]
        dead_letter = shard_pattern(output_path(plan.stage, FAILURES), ".jsonl")
        staged = matching_files([output_path(plan.stage, "**")])
        _delete([path for path in staged if not dead_letter.match(path)])
        if _still_there(plan.npy_folder(plan.run_id)):
            _delete([_folder(plan.npy_folder(plan.run_id))])
        write_json(summary["outputs"]["summary"], summary)
        release_lease(plan.output, plan.run_id)
        _LOG.error("the run failed; the output is as it was: %s", reason)
        if self._fail_job:
            # Nobody waits for a templated job: a failed job is how the verdict shows.
            raise RunFailedError(reason, summary)
        return summary


class Publish(beam.PTransform):
    """The verdict and every staged file's name to the published output; outputs the
    final summary.

    Input: a dict with `summary` (one dict), `staged` (every file name this run wrote to
    its folder) and, optionally, `bigquery` (one dict describing the load).
    """

    def __init__(self, plan: PublishPlan, fail_job: bool):
        super().__init__()
        self._plan = plan
        self._fail_job = fail_job

    def expand(self, parts: dict[str, beam.PCollection]):
        side = {
            "summary": beam.pvalue.AsSingleton(parts["summary"]),
            "staged": beam.pvalue.AsList(parts["staged"]),
        }
        if "bigquery" in parts:
            # Empty when the run failed its check: the load never ran.
            side["bigquery"] = beam.pvalue.AsSingleton(parts["bigquery"], default_value=None)
        return (
            parts["summary"].pipeline
            | "Start publishing" >> beam.Create([None])
            | "Publish or keep the earlier output"
            >> beam.ParDo(PublishFn(self._plan, self._fail_job), **side)
        )
