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

# One process whose threads run a bundle each (an SDK harness in this process, as
# Dataflow runs one with several harness threads): one model, shared by the threads,
# built once; decoding (Pillow releases the GIL) overlaps inference (so do TensorFlow
# and OpenVINO). Measured against one thread and a process per core in
# docs/performance.md, "Processes and threads".
LOCAL_MODE = "multi_threading"


def use_local_runner_defaults(options: PipelineOptions, argv: Sequence[str]) -> str | None:
    """With no --runner: Beam's FnApiRunner, in this process with a bundle thread per CPU
    core; returns the running mode if it chose it.

    Beam's DirectRunner would first try to download the Prism runner; FnApiRunner runs
    offline. --direct_running_mode and --direct_num_workers override the choice.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is not None:
        return None
    standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    chosen = None
    if not any(flag.startswith("--direct_running_mode") for flag in argv):
        chosen = direct.direct_running_mode = LOCAL_MODE
    if not any(flag.startswith("--direct_num_workers") for flag in argv):
        # 0 is one per CPU core; in_memory runs one bundle at a time (Beam warns about any
        # other count).
        direct.direct_num_workers = 1 if direct.direct_running_mode == "in_memory" else 0
    return chosen


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    return runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS
