"""Which runner a run without --runner gets, and whether a runner is local."""

from __future__ import annotations

from collections.abc import Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

LOCAL_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = {
    "FnApiRunner",
    "DirectRunner",
    "SwitchingDirectRunner",
    "BundleBasedDirectRunner",
    "PrismRunner",
    "TestDirectRunner",
}


# Up to this many input rows, one in-process worker finishes first: a worker process
# per core pays a process start, a TensorFlow import and a model build each (about 3 s
# on 2 cores) for a rate only about 10% higher; docs/performance.md, "Start-up", has the figures.
SMALL_INPUT_ROWS = 500


def use_local_runner_defaults(
    options: PipelineOptions, argv: Sequence[str], *, small_input: bool
) -> str | None:
    """With no --runner: Beam's FnApiRunner; returns the running mode it chose, if it did.

    Beam's DirectRunner would first try to download the Prism runner; FnApiRunner runs
    offline. A small input runs in this process (in_memory); a larger one in one worker
    process per core (multi_processing), each with its own model and GIL.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is not None:
        return None
    standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    chosen = None
    if not any(flag.startswith("--direct_running_mode") for flag in argv):
        chosen = direct.direct_running_mode = "in_memory" if small_input else "multi_processing"
    if not any(flag.startswith("--direct_num_workers") for flag in argv):
        # in_memory runs one bundle at a time (Beam warns about any other count); 0 is one
        # process per CPU core.
        direct.direct_num_workers = 1 if direct.direct_running_mode == "in_memory" else 0
    return chosen


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    return runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS
