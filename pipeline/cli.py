"""Command line: python -m pipeline / embed-images."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline import logs

# Before Beam, gRPC or TensorFlow is imported, here or in the processes this one starts:
# they read their log levels as they load.
logs.quiet_environment(logs.flag_given(sys.argv[1:], "verbose"))

import json  # noqa: E402
from contextlib import ExitStack  # noqa: E402

from pipeline.console import exit_now, hidden_chatter, result_lines, shown_progress  # noqa: E402
from pipeline.inputs import InputError  # noqa: E402
from pipeline.job import run  # noqa: E402
from pipeline.models import WeightsUnavailableError  # noqa: E402
from pipeline.options import UsageError, print_beam_help, print_help  # noqa: E402
from pipeline.run import RunFailedError  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the pipeline; exit 0 on success, 1 when the run failed, 2 on bad usage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-beam" in argv:
        print_beam_help()
        return 0
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    verbose, as_json = logs.flag_given(argv, "verbose"), logs.flag_given(argv, "json")
    logs.configure(verbose)
    steady_rate = None
    try:
        with ExitStack() as console:
            shown = console.enter_context(shown_progress(terminal=sys.stderr.isatty()))
            if not verbose:
                console.enter_context(hidden_chatter(shown.write))
            summary = run(argv)
            steady_rate = shown.steady_rate()
    except (UsageError, InputError, WeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RunFailedError as error:
        if as_json and error.summary is not None:
            print(json.dumps(error.summary, indent=2))
        print(f"error: run failed: {error}", file=sys.stderr)
        return 1
    if summary is None:
        print("Job submitted; its summary will be written to summary.json under --output.")
        return 0
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(result_lines(summary, steady_rate)))
    return 0


def entry() -> None:
    """The embed-images command: main, then exit at once (console.exiting)."""
    exit_now(main())
