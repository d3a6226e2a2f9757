"""Publishing: a run's staged files become the output only once the run has passed.

Every writer puts its files in the run's own folder (OUTPUT/_runs/RUN/, laid out as the
output is). The Publish step waits for all of them (side inputs), takes the verdict, and:

- passed: writes a journal (pipeline/outputs/journal.py) naming every file it will
  rename and delete, then moves the staged files to their final names, writes
  summary.json, deletes the files they replace, removes the run's folder and the
  journal, and releases the lease. Whoever finds the journal first finishes it;
- failed: keeps the output exactly as it was, leaves the run's dead letter and a summary
  marked failed in the run's folder, and releases the lease.

Each act is idempotent, so a retried bundle finishes what an interrupted one began.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

# The packages whose optional outputs declare file kinds: imported so that their classes
# are defined, and every_file_kind() finds them, wherever a PublishPlan is made.
import pipeline.destinations
import pipeline.report
import pipeline.similarity  # noqa: F401
from pipeline.common import progress, read_json, write_json
from pipeline.outputs import (
    EMBEDDING_RUNS,
    EMBEDDINGS_DIRECTORY,
    FAILURES,
    LEASE,
    LEGACY_SPILL,
    NPY_INDEX,
    RUN_ID_PATTERN,
    RUNS,
    SUMMARY,
    FileKind,
    Journal,
    JournalError,
    RunTarget,
    UnfinishedPublishError,
    as_folder,
    delete_paths,
    every_file_kind,
    finish,
    matching_files,
    output_path,
    published_path,
    read_journal,
    relative_name,
    run_folder,
    still_there,
    write_journal,
)
from pipeline.run.lease import read_lease, release_lease
from pipeline.run.summary import RunFailedError, check

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishPlan:
    """Where a run's files go, and which earlier files it keeps: with --skip_existing
    (incremental), the target's earlier runs stay current."""

    target: RunTarget
    incremental: bool = False  # --skip_existing: earlier runs' embeddings stay
    vector_folder: str | None = None
    npy_metadata: dict[str, Any] | None = None  # written beside an npy run's files
    # What the outputs declare they publish (outputs.every_file_kind), read where the
    # plan is made, where every output's class is defined.
    kinds: tuple[FileKind, ...] = field(default_factory=every_file_kind)

    @property
    def output(self) -> str:
        return self.target.output

    @property
    def run_id(self) -> str:
        return self.target.run_id

    @property
    def output_format(self) -> str:
        return self.target.output_format

    @property
    def stage(self) -> str:
        return self.target.stage

    def npy_folder(self, run_id: str) -> str:
        """The folder an npy run writes its .npy files into, in place: readers find them
        only through an index file, which is published after the verdict."""
        return output_path(self.output, f"{EMBEDDINGS_DIRECTORY}/{run_id}")

    @property
    def current_runs(self) -> list[str]:
        """The runs whose embeddings the output holds once this run is published."""
        earlier = [run for run in self.target.earlier_runs if run != self.run_id]
        return [*earlier, self.run_id] if self.incremental else [self.run_id]


def kind_folder(plan: PublishPlan, kind: FileKind) -> str | None:
    """The folder a kind's files are published in (None: no Vector Search folder)."""
    return plan.vector_folder if kind.in_vectors else plan.output


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
                found.add(as_folder(match["folder"]))
    found.update(matching_files([output_path(output, f"{LEGACY_SPILL}-*.spill")]))
    for run, has_summary in other_runs(output, plan.run_id).items():
        if not has_summary and run < plan.run_id:
            found.add(as_folder(run_folder(output, run)))
            # Its .npy files, unless it is one of the runs whose embeddings stay.
            if run not in plan.current_runs and still_there(plan.npy_folder(run)):
                found.add(as_folder(plan.npy_folder(run)))
    return sorted(found)


def replaced(plan: PublishPlan, published: set[str]) -> list[str]:
    """The files (and npy run folders) that the run's published files replace: every
    other run's files of each kind the outputs declare, but with --skip_existing the
    current runs' embeddings."""
    gone: list[str] = []
    npy_runs: set[str] = set()
    kept = set(plan.current_runs)
    for kind in plan.kinds:
        folder = kind_folder(plan, kind)
        if folder is None:
            continue
        if not kind.sharded:
            path = output_path(folder, kind.name)
            if path not in published and FileSystems.exists(path):
                gone.append(path)
            continue
        for path in matching_files([kind.glob(folder)]):
            run = kind.run_of(folder, path)
            if not run or run == plan.run_id or path in published:
                continue
            if plan.incremental and kind.kept_by_increments and run in kept:
                continue
            gone.append(path)
            if kind.name == NPY_INDEX:
                npy_runs.add(run)
    if not plan.incremental:
        # .npy files an earlier version wrote directly in embeddings/, listed by the
        # index files this run replaces.
        gone += matching_files([output_path(plan.output, f"{EMBEDDINGS_DIRECTORY}/*.npy")])
    for run in sorted(npy_runs):
        if still_there(plan.npy_folder(run)):
            gone.append(as_folder(plan.npy_folder(run)))
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
        progress.begin("publishing")
        plan = self._plan
        journal = read_journal(plan.output)
        if journal is not None and journal.run_id == plan.run_id:
            yield self._finish(journal)  # a retried bundle: this run's publish had begun
            return
        if journal is not None:
            finish(plan.output, journal)  # a publish a crash left, before this run's
        published = read_json(output_path(plan.output, SUMMARY))
        if published and published.get("run_id") == plan.run_id:
            # A retried bundle: this run published (perhaps finished by a reader, which
            # gives back no lease); a lease that still names it is released.
            release_lease(plan.output, plan.run_id)
            yield published
            return
        if bigquery is not None:
            summary = {**summary, "bigquery": bigquery}
        failed = self._failed_summary(summary)
        reason = verdict(failed, bigquery) or lease_lost(plan.output, plan.run_id)
        if reason is None:
            journal = self._journal(summary, staged)
            write_journal(plan.output, journal)
            yield self._finish(journal)
        else:
            yield self._keep_earlier({**failed, "failure_reason": reason})

    def _journal(self, summary: dict[str, Any], staged: list[str]) -> Journal:
        """What publishing renames and deletes, decided before anything is."""
        plan = self._plan
        vectors = plan.vector_folder
        names = tuple(sorted({relative_name(plan.stage, path) for path in staged}))
        published = {published_path(plan.output, vectors, name) for name in names}
        gone = replaced(plan, published) + leftovers(plan)
        in_vectors = [path for path in gone if vectors and _inside(vectors, path)]
        return Journal(
            plan.run_id,
            names,
            tuple(relative_name(plan.output, path) for path in gone if path not in in_vectors),
            {**summary, "status": "passed", EMBEDDING_RUNS: plan.current_runs},
            plan.npy_metadata if plan.output_format == "npy" else None,
            vectors,
            tuple(relative_name(vectors, path) for path in in_vectors) if vectors else (),
        )

    def _finish(self, journal: Journal) -> dict[str, Any]:
        plan = self._plan
        _LOG.info(
            "publishing %d files, removing %d replaced",
            len(journal.staged),
            len(journal.replaced) + len(journal.replaced_vectors),
        )
        try:
            finish(plan.output, journal)
        except (UnfinishedPublishError, JournalError) as error:
            # summary.json may name this run already; the journal holds the rest, and
            # whoever takes the output next finishes it, so the lease need not wait.
            release_lease(plan.output, plan.run_id)
            if self._fail_job:
                raise  # Dataflow retries the bundle, which finishes from the journal
            _LOG.error("%s", error)
            return journal.summary
        release_lease(plan.output, plan.run_id)
        return journal.summary

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
        dead_letter = FileKind(FAILURES, ".jsonl")
        staged = matching_files([output_path(plan.stage, "**")])
        delete_paths([path for path in staged if not dead_letter.run_of(plan.stage, path)])
        if still_there(plan.npy_folder(plan.run_id)):
            delete_paths([as_folder(plan.npy_folder(plan.run_id))])
        write_json(summary["outputs"]["summary"], summary)
        release_lease(plan.output, plan.run_id)
        # A local run's command says why; a remote job's log is where its reason shows.
        log = _LOG.error if self._fail_job else _LOG.debug
        log("the run failed; the output is as it was: %s", reason)
        if self._fail_job:
            # Nobody waits for a templated job: a failed job is how the verdict shows.
            raise RunFailedError(reason, summary)
        return summary


def _inside(folder: str, path: str) -> bool:
    try:
        relative_name(folder, path)
    except ValueError:
        return False
    return True


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
