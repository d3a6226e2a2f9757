"""The run summary: counts that reconcile, and the failure budget that judges a run."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.atomic import write_atomically
from pipeline.metrics import counter
from pipeline.naming import SUMMARY, output_path
from pipeline.records import STAGES

# Optional steps whose description the summary records under their name.
DESCRIBED_STEPS = ("similarity", "vector_search", "bigquery")


class RunFailedError(RuntimeError):
    """The run finished, but its result must not count as a success."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message, summary)
        self.summary = summary

    def __str__(self) -> str:
        return self.args[0]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def summarise(
    _,
    *,
    rows_with_uri: int,
    duplicates: int,
    skipped: int,
    embedded: int,
    failed_by_stage: dict[str, int],
    context: dict[str, Any],
    started_at: float,
    **described,  # not annotated: Beam's type check refuses side inputs in a typed **kwargs
) -> dict[str, Any]:
    """Builds the summary from independently counted parts, so that a lost input shows.

    described: what the optional steps that ran (DESCRIBED_STEPS) report, by step name.
    """
    failed = {stage: int(failed_by_stage.get(stage, 0)) for stage in STAGES}
    rows_read = rows_with_uri + failed["read"]
    total_failed = sum(failed.values())
    inputs = attempted(rows_read, duplicates, skipped)
    finished_at = time.time()
    elapsed = max(finished_at - started_at, 1e-9)
    return {
        "rows_read": rows_read,
        "duplicates_dropped": duplicates,
        "skipped_existing": skipped,
        "embedded": embedded,
        "failed": total_failed,
        "failed_by_stage": failed,
        "reconciled": rows_read == embedded + total_failed + duplicates + skipped,
        "failure_fraction": round(total_failed / inputs, 6) if inputs else None,
        **context,
        **described,
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "elapsed_seconds": round(elapsed, 1),
        "images_per_second": round(embedded / elapsed, 2),
    }


def attempted(rows_read: int, duplicates: int, skipped: int) -> int:
    """Inputs this run tried to embed: the denominator of the failure fraction."""
    return rows_read - duplicates - skipped


def check(summary: dict[str, Any]) -> None:
    """Raises RunFailedError when the run must not be reported as a success."""
    if summary["rows_read"] == 0:
        raise RunFailedError(f"--input {summary['input']} lists no image URIs", summary)
    if not summary["reconciled"]:
        raise RunFailedError(
            "counts do not reconcile: rows read != embedded + failed + duplicates dropped "
            f"+ skipped ({summary['rows_read']} != {summary['embedded']} + {summary['failed']} + "
            f"{summary['duplicates_dropped']} + {summary['skipped_existing']})",
            summary,
        )
    fraction, limit = summary["failure_fraction"], summary["max_failure_fraction"]
    if fraction is not None and fraction > limit:
        inputs = attempted(
            summary["rows_read"], summary["duplicates_dropped"], summary["skipped_existing"]
        )
        raise RunFailedError(
            f"{summary['failed']} of {inputs} inputs failed "
            f"({fraction:.1%} > --max_failure_fraction {limit}); "
            f"reasons are in {summary['outputs']['failures']}",
            summary,
        )


class WriteSummaryFn(beam.DoFn):
    """Writes summary.json; on remote runners also fails the job when check() says so."""

    def __init__(self, output: str, fail_job: bool):
        self._path = output_path(output, SUMMARY)
        self._fail_job = fail_job

    def process(self, summary: dict[str, Any]):
        write_atomically(self._path, (json.dumps(summary, indent=2) + "\n").encode())
        if self._fail_job:
            # Nobody waits for a templated job: a failed job is how the verdict shows.
            check(summary)
        yield summary


class CountFailuresFn(beam.DoFn):
    """Counts each failure under failed_<stage> and passes on its stage."""

    def process(self, failure):
        counter(f"failed_{failure.stage}").inc()
        yield failure.stage


class Summarise(beam.PTransform):
    """The run's independently counted parts to summary.json; outputs the summary.

    Input: a dict of PCollections: rows (rows with a URI), duplicates, skipped and
    embedded (one int each), failures (every Failure) and, optionally, similarity,
    bigquery and vector_search (one dict each, describing that step). With fail_job, a summary
    that check() rejects fails the job: nobody waits for a templated job's result.
    """

    def __init__(self, output: str, context: dict[str, Any], started_at: float, fail_job: bool):
        super().__init__()
        self._output = output
        self._context = context
        self._started_at = started_at
        self._fail_job = fail_job

    def expand(self, parts: dict[str, beam.PCollection]):
        failed_by_stage = (
            parts["failures"]
            | "Count failures" >> beam.ParDo(CountFailuresFn())
            | "Per stage" >> beam.combiners.Count.PerElement()
        )
        return (
            parts["rows"].pipeline
            | "Start" >> beam.Create([None])
            | "Add up"
            >> beam.Map(
                summarise,
                rows_with_uri=beam.pvalue.AsSingleton(parts["rows"]),
                duplicates=beam.pvalue.AsSingleton(parts["duplicates"]),
                skipped=beam.pvalue.AsSingleton(parts["skipped"]),
                embedded=beam.pvalue.AsSingleton(parts["embedded"]),
                failed_by_stage=beam.pvalue.AsDict(failed_by_stage),
                context=self._context,
                started_at=self._started_at,
                **{
                    name: beam.pvalue.AsSingleton(parts[name])
                    for name in DESCRIBED_STEPS
                    if name in parts
                },
            )
            | "Write summary" >> beam.ParDo(WriteSummaryFn(self._output, self._fail_job))
        )


def remove_summary(output: str) -> None:
    """Deletes an earlier run's summary.json, if there is one."""
    path = output_path(output, SUMMARY)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def read_summary(output: str) -> dict[str, Any]:
    with FileSystems.open(output_path(output, SUMMARY)) as handle:
        return json.loads(handle.read())
