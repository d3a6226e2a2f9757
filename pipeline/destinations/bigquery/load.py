"""The load step: once the run has passed, its shards loaded by one job (tried again
while BigQuery fails it), the table's description, and the optional vector index."""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam

from pipeline.common import progress
from pipeline.destinations.bigquery.jobs import Attempts, BigQueryLoadError, wait_for, write_mode
from pipeline.destinations.bigquery.planning import LoadPlan, loadable, plan_load
from pipeline.destinations.bigquery.recorded import describe_table, recorded_metadata
from pipeline.destinations.bigquery.table import TableName, client
from pipeline.outputs import (
    EMBEDDINGS,
    IN_TABLE,
    LEGACY_EMBEDDINGS,
    OptionalOutput,
    Provenance,
    RunTarget,
    shard_prefix,
)

_LOG = logging.getLogger(__name__)

INDEX_NAME = "embedding_index"
# "If you create a vector index on a table that is smaller than 10 MB, then the vector
# index isn't populated" (https://cloud.google.com/bigquery/docs/vector-index).
MIN_INDEX_BYTES = 10 * 2**20

# Load jobs one step tries, each after the one before failed (a transient backend error,
# say), before the run fails its verdict.
LOAD_TRIES = 3


class TableLoad:
    """One run's load into its table, and what the summary records of it.

    The run's own Parquet shards are loaded (this_run_shards: a wildcard of them, the
    staged ones by default); the output's published ones too when the table must be
    rebuilt. A run that rewrote the earlier runs' shards (rewrites_earlier: with
    --skip_existing, their keep decisions) staged them all: the table is replaced by
    every staged shard. Job ids derive from the run id, so a retried bundle finds the job it already
    started and reports that one instead of loading twice, or, if that job failed, starts
    the next attempt. How the embeddings were made (made) is the table's description.
    """

    def __init__(
        self,
        table: TableName,
        target: RunTarget,
        columns: list[str],
        made: Provenance,
        *,
        vector_index: bool = False,
        this_run_shards: str = "",
        rewrites_earlier: bool = False,
    ):
        self._table = table
        self._output = target.output
        self._run_id = target.run_id
        self._columns = columns
        self._vector_index = vector_index
        self._this_run_shards = this_run_shards or target.staged_shards
        self._rewrites_earlier = bool(rewrites_earlier and target.earlier_runs)
        if self._rewrites_earlier:
            self._this_run_shards = shard_prefix(target.stage, EMBEDDINGS, "*") + "-*.parquet"
        self._earlier_runs = target.earlier_runs
        self._made = made
        self._metadata = made.written(IN_TABLE)

    @property
    def table(self) -> TableName:
        return self._table

    def load(self, earlier_rows: int | None = None) -> dict[str, Any]:
        """Loads (or finds the job a retried step started), records how the table's
        embeddings were made, and with --bigquery_vector_index creates the index.
        earlier_rows: with --skip_existing, the embeddings the earlier runs left."""
        bq = client(self._table.project)
        # Jobs live in the dataset's location; looking one up elsewhere finds nothing.
        location = bq.get_dataset(f"{self._table.project}.{self._table.dataset}").location
        attempts = Attempts(bq, self._job_id("load"), location)
        job = attempts.current
        if job is None:
            job, attempts, why = self._plan_and_load(bq, earlier_rows, location, attempts)
        else:
            why = "a retried step found this run's load job"
        wait_for(job, f"loading Parquet files into {self._table.id}")
        table = self._record_metadata(bq, self._get_table(bq))
        loaded = job is not None and job.job_type == "load"
        described = {
            "table": self._table.id,
            "write": write_mode(job),
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
                not_created = {"name": INDEX_NAME, "created": False, "error": str(error)}
                described["vector_index"] = not_created
        return described

    def _plan_and_load(self, bq, earlier_rows, location, attempts: Attempts):
        """The plan's job (a load, a TRUNCATE, or None), its attempts, and why."""
        from google.cloud import bigquery

        # Each earlier run's shards, in either layout: only the runs the summary names.
        earlier_shards = [
            shard_prefix(self._output, name, run) + "-*.parquet"
            for run in self._earlier_runs
            for name in (EMBEDDINGS, LEGACY_EMBEDDINGS)
        ]
        existing = self._get_table(bq)
        if self._rewrites_earlier:
            reason = "the run rewrote every row's keep decision"
            plan = LoadPlan([self._this_run_shards], True, reason)
        else:
            plan = plan_load(
                existing,
                earlier_rows,
                self._this_run_shards,
                earlier_shards,
                self._columns,
                self._made,
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
            config.destination_table_description = describe_table(self._made)
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
        table.description = describe_table(self._made)
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
        wait_for(query.jobs[-1], statement)
        described = {"name": INDEX_NAME, "created": True, "statement": statement}
        return {**described, "attempts": query.described()}

    def _run_query(self, bq, statement: str, step: str, location: str) -> Attempts:
        """The step's query job, last of its attempts: the one a retried bundle started,
        or a new one."""
        attempts = Attempts(bq, self._job_id(step), location)
        if attempts.current is None:
            attempts.start(
                lambda job_id: bq.query(statement, job_id=job_id, location=location, job_retry=None)
            )
        return attempts


class LoadIntoBigQueryFn(beam.DoFn):
    """The run's verdict to its table load, tried again under the next attempt's job id
    while it fails; after LOAD_TRIES failed jobs, a description with the error instead of
    an exception, so that the run fails its verdict and keeps the earlier output."""

    def __init__(self, load: TableLoad, tries: int = LOAD_TRIES):
        self._load = load
        self._tries = tries

    def process(self, unused_passed, earlier_rows: int | None = None):
        progress.begin("loading into BigQuery")
        for tried in range(1, self._tries + 1):
            try:
                yield self._load.load(earlier_rows)
                return
            except BigQueryLoadError as error:
                _LOG.warning("BigQuery load, try %d of %d: %s", tried, self._tries, error)
                failed = error
        yield {"table": self._load.table.id, "error": str(failed), "tries": self._tries}


class LoadIntoBigQuery(OptionalOutput):
    """The table load, once the run has passed and its shards are staged; gives one dict
    describing it, which the run's verdict judges (run/publish.py).

    Reads `passed` and, with --skip_existing, `earlier` (the URIs earlier runs embedded,
    whose rows the table keeps).
    """

    name = "bigquery"
    step = "Load into BigQuery"
    reads = ("passed", "earlier")

    def __init__(self, load: TableLoad):
        super().__init__()
        self._load = load

    def final_files(self) -> dict[str, str]:
        return {"bigquery_table": self._load.table.id}

    def expand(self, run: dict[str, beam.PCollection]):
        earlier = {}
        if "earlier" in run:
            rows = run["earlier"] | "Count earlier" >> beam.combiners.Count.Globally()
            earlier["earlier_rows"] = beam.pvalue.AsSingleton(rows)
        load = run["passed"] | "Load job" >> beam.ParDo(LoadIntoBigQueryFn(self._load), **earlier)
        return {"description": load}
