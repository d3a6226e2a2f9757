"""The same search as BigQuery VECTOR_SEARCH over the table a run loaded (--bigquery_table).

VECTOR_SEARCH(TABLE t, 'embedding', (SELECT @query AS embedding), top_k => k,
distance_type => 'COSINE') (https://cloud.google.com/bigquery/docs/reference/standard-sql/
search_functions#vector_search): the query embedding is the query parameter @query, of
type ARRAY<FLOAT64>, never text in the statement. With a vector index on the embedding
column BigQuery answers from the index (approximate nearest neighbours); without one it
compares every row (https://cloud.google.com/bigquery/docs/vector-search-intro).
"""

from __future__ import annotations

import json

import numpy as np

from pipeline.destinations import BIGQUERY_COLUMN, TableName, parse_table, recorded_metadata
from pipeline.search.recorded import Recorded, SearchError
from pipeline.search.scan import Match, ranking, unit

QUERY_PARAMETER = "query"


def vector_search_sql(table: TableName, k: int, columns: tuple[str, ...]) -> str:
    """The statement: the k nearest rows' URI, cosine similarity and kept columns, most
    similar first, ties in URI order. Column names were checked as BigQuery names when the
    run loaded the table; k is an integer."""
    for name in columns:
        if not BIGQUERY_COLUMN.fullmatch(name):
            raise SearchError(f"--bigquery_table: {name!r} is not a BigQuery column name")
    kept = "".join(f", base.`{name}` AS `{name}`" for name in columns)
    return (
        f"SELECT base.uri AS uri, 1 - distance AS similarity{kept}\n"
        f"FROM VECTOR_SEARCH(TABLE {table.sql}, 'embedding', "
        f"(SELECT @{QUERY_PARAMETER} AS embedding), top_k => {int(k)}, "
        "distance_type => 'COSINE')\n"
        "ORDER BY similarity DESC, uri"
    )


def check_table(recorded: Recorded, table_spec: str) -> TableName:
    """The table's name; SearchError unless it can be read and records embeddings made
    as the output's were (a table that records nothing passes)."""
    from google.api_core import exceptions
    from google.cloud import bigquery

    try:
        table = parse_table(table_spec)
    except ValueError as error:
        raise SearchError(str(error)) from error
    try:
        described = recorded_metadata(bigquery.Client(project=table.project).get_table(table.id))
    except exceptions.GoogleAPICallError as error:
        raise SearchError(f"--bigquery_table {table.id}: {error.message}") from error
    differ = recorded.made.differences(described) if described is not None else {}
    if differ:
        shown = ", ".join(f"{key} {json.dumps(described[key])}" for key in differ)
        raise SearchError(
            f"--bigquery_table {table.id} holds embeddings made with {shown}, not as "
            f"{recorded.output} records"
        )
    return table


def search_bigquery(recorded: Recorded, table: TableName, query: np.ndarray, k: int) -> list[Match]:
    """The table's k rows nearest the query embedding, by BigQuery VECTOR_SEARCH."""
    from google.api_core import exceptions
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(
        query_parameters=[
            bigquery.ArrayQueryParameter(QUERY_PARAMETER, "FLOAT64", unit(query).tolist())
        ]
    )
    statement = vector_search_sql(table, k, recorded.keep_columns)
    try:
        client = bigquery.Client(project=table.project)
        rows = list(client.query(statement, job_config=config).result())
    except exceptions.GoogleAPICallError as error:
        raise SearchError(f"--bigquery_table {table.id}: {error.message}") from error
    found = [
        Match(
            row["uri"],
            min(float(row["similarity"]), 1.0),
            {name: row[name] for name in recorded.keep_columns},
        )
        for row in rows
    ]
    return sorted(found, key=ranking)
