"""--bigquery_table: the run's Parquet shards loaded into a table by one load job, and
an optional vector index on its embedding column. The table's description records how
its embeddings were made, so that a --skip_existing run never mixes two models in it.

The google-cloud-bigquery client is used rather than Beam's WriteToBigQuery: a load
job from the shards already written is one atomic step (no streaming inserts, no
second copy of the embeddings), and the client honours BIGQUERY_EMULATOR_HOST.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipeline.outputs import (
    EMBEDDINGS,
    LEGACY_EMBEDDINGS,
    OptionalOutput,
    matching_files,
    shard_prefix,
)

_LOG = logging.getLogger(__name__)

# Dataset names: letters, digits, underscores; table names also allow unicode letters,
# marks, dashes and spaces (https://cloud.google.com/bigquery/docs/tables#table_naming).
_PROJECT = re.compile(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]*[a-z0-9]")
_DATASET = re.compile(r"[A-Za-z0-9_]{1,1024}")
_TABLE = re.compile(r"[\w\- ]+")
# Column names in the form every loader accepts (flexible names allow more, not all
# loaders and tools do).
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}")
# Prefixes no column name may start with (loading-data-cloud-storage-parquet), upper case.
RESERVED_PREFIXES = (
    "_TABLE_", "_FILE_", "_PARTITION", "_ROW_TIMESTAMP", "__ROOT__", "_COLIDENTIFIER",
    "_CHANGE_SEQUENCE_NUMBER", "_CHANGE_TYPE", "_CHANGE_TIMESTAMP",
)  # fmt: skip

INDEX_NAME = "embedding_index"
# "If you create a vector index on a table that is smaller than 10 MB, then the vector
# index isn't populated" (https://cloud.google.com/bigquery/docs/vector-index).
MIN_INDEX_BYTES = 10 * 2**20
# How a run makes its embeddings, as the table's description records it, and what to
# call each in an error: embeddings that differ in any of them do not belong in one table.
RECORDED = {
    "model": "--model",
    "weights": "--weights",
    "pooling": "--pooling",
    "resize": "--resize",
    "embedding_shape": "the embedding shape",
}


class BigQueryLoadError(RuntimeError):
    """A load job or index statement that BigQuery refused; the message is BigQuery's."""


@dataclass(frozen=True)
class TableName:
    project: str
    dataset: str
    table: str

    @property
    def id(self) -> str:
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def sql(self) -> str:
        return f"`{self.id}`"


def parse_table(spec: str) -> TableName:
    """PROJECT.DATASET.TABLE (a domain-scoped project, example.com:proj, too)."""
    parts = spec.strip().rsplit(".", 2)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"--bigquery_table {spec!r}: expected PROJECT.DATASET.TABLE")
    project, dataset, table = parts
    if not _PROJECT.fullmatch(project):
        raise ValueError(f"--bigquery_table {spec!r}: {project!r} is not a project id")
    if not _DATASET.fullmatch(dataset):
        raise ValueError(
            f"--bigquery_table {spec!r}: dataset {dataset!r} may hold only letters, digits "
            "and underscores"
        )
    if not _TABLE.fullmatch(table) or len(table.encode()) > 1024:
        raise ValueError(f"--bigquery_table {spec!r}: {table!r} is not a valid table name")
    return TableName(project, dataset, table)


def client(project: str):
    """A BigQuery client whose jobs run (and are billed) in the table's project."""
    from google.cloud import bigquery

    return bigquery.Client(project=project)


def check_dataset(table: TableName) -> None:
    """Raises ValueError, saying why, unless the table's dataset can be reached."""
    from google.api_core import exceptions

    try:
        client(table.project).get_dataset(f"{table.project}.{table.dataset}")
    except exceptions.NotFound as error:
        raise ValueError(
            f"--bigquery_table {table.id}: dataset {table.project}.{table.dataset} does not "
            "exist; create it first (bq mk --dataset)"
        ) from error
    except exceptions.GoogleAPICallError as error:
        raise ValueError(f"--bigquery_table {table.id}: {error.message}") from error


def describe_table(metadata: dict[str, Any]) -> str:
    """The table's description: the metadata as one JSON object."""
    return json.dumps({key: metadata[key] for key in RECORDED})


def recorded_metadata(table) -> dict[str, Any] | None:
    """What a table's description records, or None for a table that records nothing
    (one made by hand, or by an earlier version of the pipeline)."""
    try:
        recorded = json.loads(table.description or "")
    except ValueError:
        return None
    if not isinstance(recorded, dict) or set(recorded) != set(RECORDED):
        return None
    return recorded


def check_recorded(table_id: str, recorded: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Raises ValueError, naming each value that differs, unless the table's embeddings
    were made as this run makes them."""
    ours = json.loads(describe_table(metadata))
    differ = [key for key in RECORDED if recorded[key] != ours[key]]
    if not differ:
        return

    def named(values: dict) -> str:
        return ", ".join(f"{RECORDED[key]} {_shown(values[key])}" for key in differ)

    raise ValueError(
        f"--bigquery_table {table_id} with --skip_existing: the table holds embeddings made "
        f"with {named(recorded)}; this run makes them with {named(ours)}, and one table must "
        "not mix the two. Run without --skip_existing to replace the table, or give another "
        "--bigquery_table"
    )


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, list) else str(value)


def check_table_matches(table: TableName | str, metadata: dict[str, Any]) -> None:
    """For a --skip_existing run: raises ValueError, saying what differs, if the table
    records embeddings made otherwise than metadata (formats.embedding_metadata) says. A missing
    table, or one that records nothing, passes: the load then replaces it."""
    from google.api_core import exceptions

    name = table if isinstance(table, TableName) else parse_table(table)
    try:
        found = client(name.project).get_table(name.id)
    except exceptions.NotFound:
        return
    except exceptions.GoogleAPICallError as error:
        raise ValueError(f"--bigquery_table {name.id}: {error.message}") from error
    recorded = recorded_metadata(found)
    if recorded is not None:
        check_recorded(name.id, recorded, metadata)


@dataclass(frozen=True)
class LoadPlan:
    """One load job: where from (Cloud Storage wildcards), and whether it replaces the
    table or adds to it."""

    sources: list[str]
    replace: bool
    reason: str


def plan_load(
    table,
    earlier_rows: int | None,
    this_run_shards: str,
    earlier_shards: list[str],
    columns: list[str],
    metadata: dict[str, Any],
) -> LoadPlan:
    """Which shards to load so that the table equals the output afterwards.

    earlier_rows is None when the run replaces the output; otherwise it is how many
    embeddings earlier runs left, and only this run's shards are appended when the
    table (None if missing) already holds exactly those, with this run's columns, made
    as this run makes them (ValueError if it records another way). Otherwise the
    earlier runs' published shards (earlier_shards, wildcards of the runs summary.json
    names) and this run's are loaded, replacing. Wildcards keep each job within
    BigQuery's 10,000 source URIs.
    """
    ours = [this_run_shards]
    everything = [*earlier_shards, this_run_shards]
    if earlier_rows is None:
        return LoadPlan(ours, True, "the run replaced the output")
    if table is None:
        return LoadPlan(everything, True, "the table did not exist")
    recorded = recorded_metadata(table)
    if recorded is None:
        return LoadPlan(everything, True, "the table did not record how its rows were made")
    check_recorded(f"{table.project}.{table.dataset_id}.{table.table_id}", recorded, metadata)
    table_columns = [field.name for field in table.schema]
    if table_columns != columns:
        return LoadPlan(everything, True, f"the table's columns were {table_columns}")
    if table.num_rows != earlier_rows:
        return LoadPlan(
            everything,
            True,
            f"the table held {table.num_rows} rows, the output {earlier_rows} before this run",
        )
    return LoadPlan(ours, False, "the table held the earlier runs' rows")


def loadable(wildcards: list[str]) -> list[str]:
    """The wildcards that name files, each file once: one that matches nothing, or only
    files an earlier wildcard names (this run's shards while they are still among the
    published ones), is left out. BigQuery would load a file named twice twice."""
    kept: list[str] = []
    named: set[str] = set()
    for wildcard in wildcards:
        files = set(matching_files([wildcard]))
        if files <= named:
            continue
        if files & named:
            raise BigQueryLoadError(
                f"{wildcard} matches some, not all, of the files that {kept} match: loading "
                "both would load those files twice"
            )
        kept.append(wildcard)
        named |= files
    return kept


class _Attempts:
    """One step's jobs: ID, then ID_2, ID_3, ... each started after the one before failed.

    Job ids are fixed per run, so a retried bundle finds the jobs it started; one that
    is pending, running or done without error is the step's job, a failed one is
    followed by a new attempt (BigQuery keeps a failed job's id forever).
    """

    def __init__(self, bq, job_id: str, location: str):
        from google.api_core import exceptions

        self._bq, self._base, self._location = bq, job_id, location
        self.jobs: list = []
        while True:
            try:
                self.jobs.append(bq.get_job(self._id(len(self.jobs) + 1), location=location))
            except exceptions.NotFound:
                break

    @property
    def current(self):
        """The job a retried step carries on with, or None if it must start one."""
        if self.jobs and not _failed(self.jobs[-1]):
            return self.jobs[-1]
        return None

    def start(self, insert: Callable[[str], Any]):
        """insert(job_id) under the next attempt's id; a 409 means a concurrent attempt
        of the same bundle started it first, so that job is the step's."""
        from google.api_core import exceptions

        job_id = self._id(len(self.jobs) + 1)
        try:
            job = insert(job_id)
        except exceptions.Conflict:
            job = self._bq.get_job(job_id, location=self._location)
        self.jobs.append(job)
        return job

    def described(self) -> list[dict[str, Any]]:
        """Each attempt's id, state and error, for the summary."""
        return [
            {
                "job_id": job.job_id,
                "state": job.state,
                "error": (job.error_result or {}).get("message"),
            }
            for job in self.jobs
        ]

    def _id(self, attempt: int) -> str:
        return self._base if attempt == 1 else f"{self._base}_{attempt}"


def _failed(job) -> bool:
    return job.state == "DONE" and job.error_result is not None


class LoadIntoBigQueryFn(beam.DoFn):
    """This run's final shard names to a load job; outputs what the summary records.

    this_run_shards is a gs:// wildcard of the run's own Parquet shards; the output's
    published ones are loaded too when the table must be rebuilt. Job ids derive from
    the run id, so a retried bundle finds the job it already started and reports that
    one instead of loading twice, or, if that job failed, starts the next attempt.
    metadata (formats.embedding_metadata) is recorded as the table's description.
    """

    def __init__(
        self,
        table: TableName,
        output: str,
        run_id: str,
        columns: list[str],
        vector_index: bool,
        *,
        this_run_shards: str,
        metadata: dict[str, Any],
        earlier_runs: tuple[str, ...] = (),
    ):
        self._table = table
        self._output = output
        self._run_id = run_id
        self._columns = columns
        self._vector_index = vector_index
        self._this_run_shards = this_run_shards
        self._earlier_runs = tuple(earlier_runs)
        self._metadata = json.loads(describe_table(metadata))

    @property
    def table(self) -> TableName:
        return self._table

    def process(self, unused_passed, earlier_rows: int | None = None):
        bq = client(self._table.project)
        # Jobs live in the dataset's location; looking one up elsewhere finds nothing.
        location = bq.get_dataset(f"{self._table.project}.{self._table.dataset}").location
        attempts = _Attempts(bq, self._job_id("load"), location)
        job = attempts.current
        if job is None:
            job, attempts, why = self._plan_and_load(bq, earlier_rows, location, attempts)
        else:
            why = "a retried step found this run's load job"
        self._wait(job, f"loading Parquet files into {self._table.id}")
        table = self._record_metadata(bq, self._get_table(bq))
        loaded = job is not None and job.job_type == "load"
        described = {
            "table": self._table.id,
            "write": _write_mode(job),
            "why": why,
            "job_id": job.job_id if job else None,
            "attempts": attempts.described() if job else [],
            "sources": list(job.source_uris) if loaded else [],
            "rows_loaded": job.output_rows if loaded else 0,
            "table_rows": table.num_rows if table else 0,
        }
        if self._vector_index:
            size = table.num_bytes if table else 0
            try:
                described["vector_index"] = self._create_index(bq, size, location)
            except BigQueryLoadError as error:
                # The table already equals the staged output; an index only speeds searches.
                _LOG.warning("--bigquery_vector_index: not created: %s", error)
                described["vector_index"] = {"name": INDEX_NAME, "created": False,
                                             "error": str(error)}  # fmt: skip
        yield described

    def _plan_and_load(self, bq, earlier_rows, location, attempts: _Attempts):
        """The plan's job (a load, a TRUNCATE, or None), its attempts, and why."""
        from google.cloud import bigquery

        # Each earlier run's shards, in either layout: only the runs the summary names.
        earlier_shards = [
            shard_prefix(self._output, name, run) + "-*.parquet"
            for run in self._earlier_runs
            for name in (EMBEDDINGS, LEGACY_EMBEDDINGS)
        ]
        existing = self._get_table(bq)
        plan = plan_load(
            existing,
            earlier_rows,
            self._this_run_shards,
            earlier_shards,
            self._columns,
            self._metadata,
        )
        # A run that wrote no shards (or an output without any) has nothing to load.
        plan = LoadPlan(loadable(plan.sources), plan.replace, plan.reason)
        mode = "replacing with" if plan.replace else "appending"
        _LOG.info("BigQuery %s: %s %s (%s)", self._table.id, mode, plan.sources, plan.reason)
        if not plan.sources:
            if plan.replace and existing is not None:
                statement = f"TRUNCATE TABLE {self._table.sql}"
                query = self._run_query(bq, statement, "truncate", location)
                return query.jobs[-1], query, plan.reason
            return None, attempts, plan.reason
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=(
                bigquery.WriteDisposition.WRITE_TRUNCATE
                if plan.replace
                else bigquery.WriteDisposition.WRITE_APPEND
            ),
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED,
        )
        # Without list inference a Parquet LIST column loads as a RECORD of `list.element`
        # instead of ARRAY<FLOAT64>, which VECTOR_SEARCH needs.
        options = bigquery.ParquetOptions()
        options.enable_list_inference = True
        config.parquet_options = options
        # BigQuery sets this description on a table the job creates, and fails the job
        # if an existing table's differs: an append thus refuses a table changed since
        # the plan. A table being replaced records this run's once loaded instead.
        if existing is None or recorded_metadata(existing) == self._metadata:
            config.destination_table_description = describe_table(self._metadata)
        job = attempts.start(
            lambda job_id: bq.load_table_from_uri(
                plan.sources, self._table.id, job_id=job_id, job_config=config, location=location
            )
        )
        return job, attempts, plan.reason

    def _record_metadata(self, bq, table):
        """The table, its description made this run's if it held another (a replacing
        load or TRUNCATE keeps a table's description)."""
        if table is None or recorded_metadata(table) == self._metadata:
            return table
        table.description = describe_table(self._metadata)
        return bq.update_table(table, ["description"])

    def _get_table(self, bq):
        from google.api_core import exceptions

        try:
            return bq.get_table(self._table.id)
        except exceptions.NotFound:
            return None

    def _job_id(self, step: str) -> str:
        return f"image_embeddings_{self._run_id.replace('T', '_')}_{step}"

    def _create_index(self, bq, table_bytes: int, location: str) -> dict[str, Any]:
        """IF NOT EXISTS: a later run keeps the index, or recreates it if a replacing
        load dropped it (Google's pages do not say which happens)."""
        if table_bytes < MIN_INDEX_BYTES:
            reason = (
                f"the table holds {table_bytes / 2**20:.1f} MB; BigQuery populates a vector "
                f"index only on tables of 10 MB or more"
            )
            _LOG.warning("--bigquery_vector_index: not created: %s", reason)
            return {"name": INDEX_NAME, "created": False, "reason": reason}
        statement = (
            f"CREATE VECTOR INDEX IF NOT EXISTS {INDEX_NAME} ON {self._table.sql}(embedding) "
            "OPTIONS(index_type = 'IVF', distance_type = 'COSINE')"
        )
        query = self._run_query(bq, statement, "vector_index", location)
        self._wait(query.jobs[-1], statement)
        described = {"name": INDEX_NAME, "created": True, "statement": statement}
        return {**described, "attempts": query.described()}

    def _run_query(self, bq, statement: str, step: str, location: str) -> _Attempts:
        """The step's query job, last of its attempts: the one a retried bundle started,
        or a new one."""
        attempts = _Attempts(bq, self._job_id(step), location)
        if attempts.current is None:
            attempts.start(
                lambda job_id: bq.query(statement, job_id=job_id, location=location, job_retry=None)
            )
        return attempts

    @staticmethod
    def _wait(job, what: str) -> None:
        from google.api_core import exceptions

        if job is None:
            return
        try:
            job.result()
        except exceptions.GoogleAPICallError as error:
            details = "; ".join(
                item.get("message", "") for item in (job.errors or []) if item.get("message")
            )
            raise BigQueryLoadError(
                f"BigQuery job {job.job_id} failed {what}: {error.message}"
                + (f" ({details})" if details and details not in error.message else "")
            ) from error


def _write_mode(job) -> str:
    """replace or append, as the job did it (nothing to load: nothing appended)."""
    if job is None:
        return "append"
    if job.job_type == "query":  # TRUNCATE TABLE
        return "replace"
    return "replace" if job.write_disposition == "WRITE_TRUNCATE" else "append"


# Load jobs one step tries, each after the one before failed (a transient backend error,
# say), before the run fails its verdict.
LOAD_TRIES = 3


class LoadOrReportFn(beam.DoFn):
    """load_fn's load, tried again under the next attempt's job id while it fails; after
    LOAD_TRIES failed jobs, a description with the error instead of an exception, so that
    the run fails its verdict and keeps the earlier output (publish.py)."""

    def __init__(self, load_fn: LoadIntoBigQueryFn, tries: int = LOAD_TRIES):
        self._fn = load_fn
        self._tries = tries

    def process(self, element, earlier_rows: int | None = None):
        for tried in range(1, self._tries + 1):
            try:
                described = list(self._fn.process(element, earlier_rows))
            except BigQueryLoadError as error:
                _LOG.warning("BigQuery load, try %d of %d: %s", tried, self._tries, error)
                failed = error
            else:
                yield from described
                return
        yield {"table": self._fn.table.id, "error": str(failed), "tries": self._tries}


class LoadIntoBigQuery(OptionalOutput):
    """The load load_fn makes, once the run has passed and its shards are staged; gives
    one dict describing it, which the run's verdict judges (publish.py).

    Reads `passed` and, with --skip_existing, `earlier` (the URIs earlier runs embedded,
    whose rows the table keeps).
    """

    name = "bigquery"
    step = "Load into BigQuery"
    reads = ("passed", "earlier")

    def __init__(self, load_fn: LoadIntoBigQueryFn):
        super().__init__()
        self._fn = load_fn

    def final_files(self) -> dict[str, str]:
        return {"bigquery_table": self._fn.table.id}

    def expand(self, run: dict[str, beam.PCollection]):
        earlier = {}
        if "earlier" in run:
            rows = run["earlier"] | "Count earlier" >> beam.combiners.Count.Globally()
            earlier["earlier_rows"] = beam.pvalue.AsSingleton(rows)
        load = run["passed"] | "Load job" >> beam.ParDo(LoadOrReportFn(self._fn), **earlier)
        return {"description": load}
