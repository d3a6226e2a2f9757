"""The run summary: counts that reconcile, and the failure budget that judges a run."""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam

from pipeline.common import STAGES, Failure, counter, read_json
from pipeline.outputs import SUMMARY, output_path, run_folder

# How many failures the summary lists, first by URI, for a failed run's message.
FIRST_FAILURES = 3

# The parts Summarise counts; any other part is an optional output's description.
COUNTED = frozenset({"rows", "duplicates", "skipped", "embedded", "failures", "fetched"})
# A web image's HTTP status, as a failed fetch's message gives it (inputs.HttpStatusError).
_HTTP_STATUS = re.compile(r": HTTP (\d{3})\b")
_WEB = ("http://", "https://")


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
    first_failures: list,
    context: dict[str, Any],
    fetched: int = 0,
    fetch_failures: dict[str, int] | None = None,
    started_at: float,
    **described,  # not annotated: Beam's type check refuses side inputs in a typed **kwargs
) -> dict[str, Any]:
    """Builds the summary from independently counted parts, so that a lost input shows;
    first_failures: the FIRST_FAILURES failures first by URI, which a failed run names;
    fetched, fetch_failures: http(s) images loaded, and those not, by fetch_outcome.

    described: what the optional outputs that ran report, by output name.
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
        "first_failures": [asdict(failure) for failure in first_failures],
        "reconciled": rows_read == embedded + total_failed + duplicates + skipped,
        "failure_fraction": round(total_failed / inputs, 6) if inputs else None,
        "fetches": {"fetched": fetched, "failed": dict(sorted((fetch_failures or {}).items()))},
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
    failed, fraction = summary["failed"], summary["failure_fraction"]
    inputs = attempted(
        summary["rows_read"], summary["duplicates_dropped"], summary["skipped_existing"]
    )
    if failed and not summary["embedded"] and failed == inputs:
        raise RunFailedError(
            f"none of the {inputs} inputs could be embedded{_reasons(summary)}", summary
        )
    limit, floor = summary["max_failure_fraction"], summary.get("max_failures", 0)
    if fraction is not None and fraction > limit and failed > floor:
        raise RunFailedError(
            f"{failed} of {inputs} inputs failed ({fraction:.1%} > --max_failure_fraction "
            f"{limit}, and more than --max_failures {floor}){_reasons(summary)}",
            summary,
        )


def _reasons(summary: dict[str, Any]) -> str:
    """The first failures by URI, one per line, and the command that lists them all."""
    shown = summary.get("first_failures", [])
    files = summary["outputs"]["failures"]
    reader = "gcloud storage cat" if files.startswith("gs://") else "cat"
    if not shown:
        return f"; reasons are in {files}"
    first = "" if len(shown) == summary["failed"] else f"; the first {len(shown)} by URI"
    lines = "".join(f"\n  {f['uri']}: {f['error_type']}: {f['message']}" for f in shown)
    return f"{first}:{lines}\n  list them all: {reader} {files}"


class CountFailuresFn(beam.DoFn):
    """Counts each failure under failed_<stage> and passes on its stage."""

    def process(self, failure):
        counter(f"failed_{failure.stage}").inc()
        yield failure.stage


class Summarise(beam.PTransform):
    """The run's independently counted parts to the summary that check() judges.

    Input: a dict of PCollections: rows (rows with a URI), duplicates, skipped and
    embedded (one int each), failures (every Failure) and any optional output's
    description (one dict each, by the output's name). Outputs one dict.
    """

    def __init__(self, context: dict[str, Any], started_at: float):
        super().__init__()
        self._context = context
        self._started_at = started_at

    def expand(self, parts: dict[str, beam.PCollection]):
        failed_by_stage = (
            parts["failures"]
            | "Count failures" >> beam.ParDo(CountFailuresFn())
            | "Per stage" >> beam.combiners.Count.PerElement()
        )
        first_failures = parts["failures"] | "First failures" >> beam.combiners.Top.Smallest(
            FIRST_FAILURES, key=_failure_order
        )
        fetch_failures = (
            parts["failures"]
            | "Failed fetches" >> beam.FlatMap(fetch_outcome)
            | "Per outcome" >> beam.combiners.Count.PerElement()
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
                first_failures=beam.pvalue.AsSingleton(first_failures),
                fetched=beam.pvalue.AsSingleton(parts["fetched"]),
                fetch_failures=beam.pvalue.AsDict(fetch_failures),
                context=self._context,
                started_at=self._started_at,
                **{
                    name: beam.pvalue.AsSingleton(part)
                    for name, part in parts.items()
                    if name not in COUNTED
                },
            )
        )


def fetch_outcome(failure: Failure):
    """An http(s) image that failed to load, as the summary counts it: HTTP and its status
    for a status error, else the error's type (a refused address, a timeout, an opt-out,
    an image that does not decode)."""
    if failure.stage != "load" or not failure.uri.startswith(_WEB):
        return
    status = _HTTP_STATUS.search(failure.message)
    yield (
        f"HTTP {status.group(1)}"
        if failure.error_type == "HttpStatusError" and status
        else (failure.error_type)
    )


def _failure_order(failure: Failure) -> tuple[str, str, str, str]:
    return (failure.uri, failure.stage, failure.error_type, failure.message)


def read_summary(output: str, run_id: str) -> dict[str, Any]:
    """The run's summary: the output's, once the run published, or else the one its
    folder keeps for a failed run."""
    for path in (output_path(output, SUMMARY), output_path(run_folder(output, run_id), SUMMARY)):
        summary = read_json(path)
        if summary and summary.get("run_id") == run_id:
            return summary
    raise RunFailedError(f"the run {run_id} wrote no summary under {output}")
