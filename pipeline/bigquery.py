"""--bigquery_table: the run's Parquet shards loaded into a table by one load job, and
an optional vector index on its embedding column.

The google-cloud-bigquery client is used rather than Beam's WriteToBigQuery: a load
job from the shards already written is one atomic step (no streaming inserts, no
second copy of the embeddings), and the client honours BIGQUERY_EMULATOR_HOST.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from pipeline.formats import FORMATS
from pipeline.naming import EMBEDDINGS, matching_files, shard_prefix

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


@dataclass(frozen=True)
class LoadPlan:
    """One load job: where from (Cloud Storage wildcards), and whether it replaces the
    table or adds to it."""

    sources: list[str]
    replace: bool
    reason: str


def plan_load(
    table, earlier_rows: int | None, this_run_shards: str, all_shards: str, columns: list[str]
) -> LoadPlan:
    """Which shards to load so that the table equals the output afterwards.

    earlier_rows is None when the run replaces the output; otherwise it is how many
    embeddings earlier runs left, and only this run's shards are appended when the
    table (None if missing) already holds exactly those, with this run's columns.
    A wildcard keeps each job within BigQuery's 10,000 source URIs.
    """
    ours = [this_run_shards]
    if earlier_rows is None:
        return LoadPlan(ours, True, "the run replaced the output")
    if table is None:
        return LoadPlan([all_shards], True, "the table did not exist")
    table_columns = [field.name for field in table.schema]
    if table_columns != columns:
        return LoadPlan([all_shards], True, f"the table's columns were {table_columns}")
    if table.num_rows != earlier_rows:
        return LoadPlan(
            [all_shards],
            True,
            f"the table held {table.num_rows} rows, the output {earlier_rows} before this run",
        )
    return LoadPlan(ours, False, "the table held the earlier runs' rows")


class LoadIntoBigQueryFn(beam.DoFn):
    """This run's final shard names to a load job; outputs what the summary records.

    Job ids derive from the run id, so a retried bundle finds the job it already
    started and reports that one, instead of loading twice.
    """

    def __init__(
        self,
        table: TableName,
        output: str,
        run_id: str,
        columns: list[str],
        vector_index: bool,
    ):
        self._table = table
        self._output = output
        self._run_id = run_id
        self._columns = columns
        self._vector_index = vector_index

    def process(self, unused_this_run: list[str], earlier_rows: int | None = None):
        bq = client(self._table.project)
        # Jobs live in the dataset's location; looking one up elsewhere finds nothing.
        location = bq.get_dataset(f"{self._table.project}.{self._table.dataset}").location
        job = self._find_job(bq, "load", location)
        if job is None:
            job, why = self._plan_and_load(bq, earlier_rows, location)
        else:
            why = "a retried step found this run's load job"
        self._wait(job, f"loading Parquet files into {self._table.id}")
        table = self._get_table(bq)
        loaded = job is not None and job.job_type == "load"
        described = {
            "table": self._table.id,
            "write": _write_mode(job),
            "why": why,
            "job_id": job.job_id if job else None,
            "sources": list(job.source_uris) if loaded else [],
            "rows_loaded": job.output_rows if loaded else 0,
            "table_rows": table.num_rows if table else 0,
        }
        if self._vector_index:
            size = table.num_bytes if table else 0
            described["vector_index"] = self._create_index(bq, size, location)
        yield described

    def _plan_and_load(self, bq, earlier_rows, location):
        from google.cloud import bigquery

        parquet = FORMATS["parquet"]
        this_run_shards = shard_prefix(self._output, EMBEDDINGS, self._run_id) + "-*.parquet"
        all_shards = parquet.embedding_files(self._output)
        existing = self._get_table(bq)
        plan = plan_load(existing, earlier_rows, this_run_shards, all_shards, self._columns)
        # A run that wrote no shards (or an output without any) has nothing to load.
        if not matching_files(plan.sources):
            plan = LoadPlan([], plan.replace, plan.reason)
        mode = "replacing with" if plan.replace else "appending"
        _LOG.info("BigQuery %s: %s %s (%s)", self._table.id, mode, plan.sources, plan.reason)
        if not plan.sources:
            if plan.replace and existing is not None:
                statement = f"TRUNCATE TABLE {self._table.sql}"
                return self._run_query(bq, statement, "truncate", location), plan.reason
            return None, plan.reason
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
        job = bq.load_table_from_uri(
            plan.sources,
            self._table.id,
            job_id=self._job_id("load"),
            job_config=config,
            location=location,
        )
        return job, plan.reason

    def _get_table(self, bq):
        from google.api_core import exceptions

        try:
            return bq.get_table(self._table.id)
        except exceptions.NotFound:
            return None

    def _find_job(self, bq, step: str, location: str):
        from google.api_core import exceptions

        try:
            return bq.get_job(self._job_id(step), location=location)
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
        self._wait(self._run_query(bq, statement, "vector_index", location), statement)
        return {"name": INDEX_NAME, "created": True, "statement": statement}

    def _run_query(self, bq, statement: str, step: str, location: str):
        """The step's query job: the one a retried bundle started, or a new one."""
        job = self._find_job(bq, step, location)
        if job is None:
            job_id = self._job_id(step)
            job = bq.query(statement, job_id=job_id, location=location, job_retry=None)
        return job

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


class LoadIntoBigQuery(beam.PTransform):
    """This run's final Parquet shard names (and, for --skip_existing, how many embeddings
    earlier runs left) to one dict describing the load that load_fn made."""

    def __init__(self, load_fn: LoadIntoBigQueryFn, earlier_rows=None):
        super().__init__()
        self._fn = load_fn
        self._earlier_rows = earlier_rows

    def expand(self, files):
        earlier = {}
        if self._earlier_rows is not None:
            earlier["earlier_rows"] = beam.pvalue.AsSingleton(self._earlier_rows)
        listed = files | "List shards" >> beam.combiners.ToList()
        return listed | "Load job" >> beam.ParDo(self._fn, **earlier)
