"""A finished run's result as a person reads it in five seconds: the counts, the rate,
and where the outputs are."""

from __future__ import annotations

from typing import Any

# Where start-up takes more than this share of a run, the rate once the model was loaded
# is shown beside the overall one.
STARTUP_SHARE = 0.2


def result_lines(summary: dict[str, Any], steady_rate: float | None = None) -> list[str]:
    """The counts, the rate (and steady_rate, images/s once the model was loaded, where
    start-up dominates), where each output is, and the report to open."""
    outputs = dict(summary.get("outputs", {}))
    report = outputs.pop("report", None)
    failures, summary_file = outputs.pop("failures"), outputs.pop("summary")
    outputs["summary"] = summary_file
    if summary["failed"]:
        reader = "gcloud storage cat" if failures.startswith("gs://") else "cat"
        outputs["failures"] = f"{reader} {failures}"
    width = max(len(name) for name in outputs)
    lines = [_counts(summary), _rate(summary, steady_rate)]
    lines += [f"  {name.replace('_', ' '):<{width}}  {where}" for name, where in outputs.items()]
    if report:
        lines.append(f"Open {report} in a browser to see the map and the report.")
    return lines


def _counts(summary: dict[str, Any]) -> str:
    details = [f"{summary['failed']} failed"]
    if summary["duplicates_dropped"]:
        details.append(f"{summary['duplicates_dropped']} duplicates dropped")
    if summary["skipped_existing"]:
        details.append(f"{summary['skipped_existing']} already embedded")
    return (
        f"Embedded {summary['embedded']:,} of {summary['rows_read']:,} rows "
        f"({', '.join(details)}) in {summary['elapsed_seconds']} s."
    )


def _rate(summary: dict[str, Any], steady_rate: float | None) -> str:
    overall = summary["images_per_second"]
    line = f"  {overall:,.2f} images/s overall"
    if steady_rate and overall < steady_rate * (1 - STARTUP_SHARE):
        line += f"; {steady_rate:,.2f} images/s once the model was loaded (start-up dominates)"
    return line
