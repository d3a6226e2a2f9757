"""A BigQuery table's name as --bigquery_table gives it, the column names every loader
takes, and the client whose jobs run in the table's project."""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    "_TABLE_",
    "_FILE_",
    "_PARTITION",
    "_ROW_TIMESTAMP",
    "__ROOT__",
    "_COLIDENTIFIER",
    "_CHANGE_SEQUENCE_NUMBER",
    "_CHANGE_TYPE",
    "_CHANGE_TIMESTAMP",
)


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
