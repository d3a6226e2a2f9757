"""--bigquery_table: the run's Parquet shards loaded into a table by one load job, and
an optional vector index on its embedding column. The table's description records how
its embeddings were made, so that a --skip_existing run never mixes two models in it.

The google-cloud-bigquery client is used rather than Beam's WriteToBigQuery: a load
job from the shards already written is one atomic step (no streaming inserts, no
second copy of the embeddings), and the client honours BIGQUERY_EMULATOR_HOST.

table.py names the table, recorded.py checks what it records, planning.py decides
what one job loads, jobs.py finds a retried step's jobs, load.py is the Beam step.
"""

from pipeline.destinations.bigquery.jobs import BigQueryLoadError
from pipeline.destinations.bigquery.load import (
    INDEX_NAME,
    LOAD_TRIES,
    MIN_INDEX_BYTES,
    LoadIntoBigQuery,
    LoadIntoBigQueryFn,
    TableLoad,
)
from pipeline.destinations.bigquery.planning import LoadPlan, loadable, plan_load
from pipeline.destinations.bigquery.recorded import (
    check_recorded,
    check_table_matches,
    describe_table,
    recorded_metadata,
)
from pipeline.destinations.bigquery.table import (
    COLUMN,
    RESERVED_PREFIXES,
    TableName,
    check_dataset,
    client,
    parse_table,
)

__all__ = [
    "COLUMN",
    "INDEX_NAME",
    "LOAD_TRIES",
    "MIN_INDEX_BYTES",
    "RESERVED_PREFIXES",
    "BigQueryLoadError",
    "LoadIntoBigQuery",
    "LoadIntoBigQueryFn",
    "LoadPlan",
    "TableLoad",
    "TableName",
    "check_dataset",
    "check_recorded",
    "check_table_matches",
    "client",
    "describe_table",
    "loadable",
    "parse_table",
    "plan_load",
    "recorded_metadata",
]
