"""Copies of the embeddings for other services: a BigQuery table, Vertex AI Vector Search files."""

from pipeline.destinations.bigquery import COLUMN as BIGQUERY_COLUMN
from pipeline.destinations.bigquery import (
    RESERVED_PREFIXES,
    LoadIntoBigQuery,
    TableLoad,
    TableName,
    check_dataset,
    check_table_matches,
    parse_table,
    recorded_metadata,
)
from pipeline.destinations.vectorsearch import MAX_FILES as MAX_VECTOR_FILES
from pipeline.destinations.vectorsearch import (
    VectorSearchSettings,
    WriteVectorSearch,
    foreign_files,
    vector_files,
)
from pipeline.destinations.vectorsearch import describe as describe_vector_files

__all__ = [
    "BIGQUERY_COLUMN",
    "MAX_VECTOR_FILES",
    "RESERVED_PREFIXES",
    "LoadIntoBigQuery",
    "TableLoad",
    "TableName",
    "VectorSearchSettings",
    "WriteVectorSearch",
    "check_dataset",
    "check_table_matches",
    "describe_vector_files",
    "foreign_files",
    "parse_table",
    "recorded_metadata",
    "vector_files",
]
