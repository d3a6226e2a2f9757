"""What a table's description records of how its embeddings were made, and the check
that refuses to mix embeddings made otherwise in one table."""

from __future__ import annotations

import json
from typing import Any

from pipeline.destinations.bigquery.table import TableName, client, parse_table
from pipeline.outputs import IN_TABLE, Provenance, named


def describe_table(made: Provenance) -> str:
    """The table's description: how its embeddings were made, as one JSON object."""
    return json.dumps(made.written(IN_TABLE))


def recorded_metadata(table) -> dict[str, Any] | None:
    """What a table's description records, or None for a table that records nothing
    (one made by hand, or by an earlier version of the pipeline)."""
    try:
        recorded = json.loads(table.description or "")
    except ValueError:
        return None
    if not isinstance(recorded, dict):
        return None
    fields = set(recorded)
    if not set(Provenance.always_in(IN_TABLE)) <= fields <= set(Provenance.fields_in(IN_TABLE)):
        return None
    return recorded


def check_recorded(table_id: str, recorded: dict[str, Any], made: Provenance) -> None:
    """Raises ValueError, naming each value that differs, unless the table's embeddings
    were made as this run makes them."""
    differ = made.differences(recorded)
    if not differ:
        return
    theirs = ", ".join(f"{named(key)} {_shown(values[0])}" for key, values in differ.items())
    ours = ", ".join(f"{named(key)} {_shown(values[1])}" for key, values in differ.items())
    raise ValueError(
        f"--bigquery_table {table_id} with --skip_existing: the table holds embeddings made "
        f"with {theirs}; this run makes them with {ours}, and one table must not mix the "
        "two. Run without --skip_existing to replace the table, or give another "
        "--bigquery_table"
    )


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, list) else str(value)


def check_table_matches(table: TableName | str, made: Provenance) -> None:
    """For a --skip_existing run: raises ValueError, saying what differs, if the table
    records embeddings made otherwise than this run makes them. A missing table, or one
    that records nothing, passes: the load then replaces it."""
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
        check_recorded(name.id, recorded, made)
