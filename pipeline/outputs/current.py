"""Which runs' embeddings an output holds now: the runs its summary.json names. Readers
(--skip_existing, the similarity search over earlier runs, BigQuery, search) read only
their shards, so that a file left by an unfinished or foreign write is never read."""

from __future__ import annotations

import re

from pipeline.common import read_json
from pipeline.outputs.formats import FORMATS
from pipeline.outputs.naming import (
    RUN_ID_PATTERN,
    SUMMARY,
    matching_files,
    output_path,
    run_of_shard,
)

EMBEDDING_RUNS = "embedding_runs"  # the summary's list of the runs whose embeddings count


def current_runs(output: str, output_format: str) -> tuple[str, ...]:
    """The runs whose embeddings the output holds, oldest first: those summary.json names,
    none without one (named_runs)."""
    summary = read_json(output_path(output, SUMMARY))
    return () if summary is None else named_runs(summary, output, output_format)


def recorded_collection(output: str) -> tuple[str, tuple[str, ...]]:
    """Another output's --output_format and the runs whose embeddings it holds, as its
    summary.json says (--compare_with); ValueError for one without a summary that says
    both."""
    summary = read_json(output_path(output, SUMMARY))
    if summary is None:
        raise ValueError(f"{output} holds no {SUMMARY}")
    output_format = summary.get("output_format")
    if output_format not in FORMATS:
        raise ValueError(
            f"{output_path(output, SUMMARY)} names no --output_format this version reads"
        )
    return output_format, named_runs(summary, output, output_format)


def named_runs(summary: dict, output: str, output_format: str) -> tuple[str, ...]:
    """The runs an output's summary names. A summary of a version before the list counts
    every run whose record files are there. ValueError for a list that is not one of run
    ids."""
    runs = summary.get(EMBEDDING_RUNS)
    if runs is None:
        found = matching_files(FORMATS[output_format].record_files(output))
        return tuple(sorted({run for path in found if (run := run_of_shard(path))}))
    if not isinstance(runs, list) or not all(
        isinstance(run, str) and re.fullmatch(RUN_ID_PATTERN, run) for run in runs
    ):
        raise ValueError(
            f"{output_path(output, SUMMARY)}: {EMBEDDING_RUNS} is not a list of run ids"
        )
    return tuple(runs)


def of_runs(paths: list[str], runs: tuple[str, ...] | frozenset[str]) -> list[str]:
    """The shard paths that belong to one of runs."""
    wanted = set(runs)
    return [path for path in paths if run_of_shard(path) in wanted]


def current_record_files(output: str, output_format: str, runs: tuple[str, ...]) -> list[str]:
    """The record files (Parquet shards, npy index files) of runs under output."""
    return of_runs(matching_files(FORMATS[output_format].record_files(output)), runs)
