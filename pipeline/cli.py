"""Command line: python -m pipeline / embed-images."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

# Before TensorFlow is imported here or in worker processes (they inherit it):
# its C++ start-up chatter hides the lines that matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline import logs
from pipeline.inputs import InputError
from pipeline.job import run
from pipeline.models import WeightsUnavailableError
from pipeline.options import UsageError, build_parser
from pipeline.run import RunFailedError


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the pipeline; exit 0 on success, 1 when the run failed, 2 on bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser().print_help()
        return 0
    logs.configure()
    try:
        summary = run(argv)
    except (UsageError, InputError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailedError as error:
        if error.summary is not None:
            print(json.dumps(error.summary, indent=2))
        print(f"error: run failed: {error}", file=sys.stderr)
        return 1
    if summary is None:
        print("Job submitted; its summary will be written to summary.json under --output.")
        return 0
    print(json.dumps(summary, indent=2))
    print(
        f"Embedded {summary['embedded']} of {summary['rows_read']} rows "
        f"({summary['failed']} failed, {summary['duplicates_dropped']} duplicates dropped, "
        f"{summary['skipped_existing']} already embedded) "
        f"in {summary['elapsed_seconds']} s: {summary['images_per_second']} images/s."
    )
    return 0
