"""Which shards one run's load job reads, and whether it replaces the table or appends,
so that the table equals the output afterwards."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.destinations.bigquery.jobs import BigQueryLoadError
from pipeline.destinations.bigquery.recorded import check_recorded, recorded_metadata
from pipeline.outputs import Provenance, matching_files


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
    made: Provenance,
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
    check_recorded(f"{table.project}.{table.dataset_id}.{table.table_id}", recorded, made)
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
