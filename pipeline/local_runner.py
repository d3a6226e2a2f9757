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

# A larger input runs in one process whose threads run a bundle each (an SDK harness in
# this process, as Dataflow runs one with several harness threads): one model, shared by
# the threads; decoding (Pillow releases the GIL) overlaps inference (so do TensorFlow
# and OpenVINO). Up to SMALL_INPUT_ROWS rows, one thread finishes first: the threads'
# harness costs about 0.5 s more per run (its gRPC data plane, per step; 1.5 s with the
# map and neighbour steps), which the overlap, 3.2 ms per image with OpenVINO bfloat16,
# wins back only past about 150 images. docs/performance.md, "Processes and threads".
SMALL_INPUT_ROWS = 150
LARGE_INPUT_MODE = "multi_threading"


def use_local_runner_defaults(
    options: PipelineOptions, argv: Sequence[str], *, small_input: bool
) -> str | None:
    """With no --runner: Beam's FnApiRunner, in this process; returns the running mode if
    it chose it.

    A small input runs in one thread (in_memory), a larger one with a bundle thread per
    CPU core (multi_threading). Beam's DirectRunner would first try to download the Prism
    runner; FnApiRunner runs offline. --direct_running_mode and --direct_num_workers
    override the choice.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is not None:
        return None
    standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    chosen = None
    if not any(flag.startswith("--direct_running_mode") for flag in argv):
        chosen = direct.direct_running_mode = "in_memory" if small_input else LARGE_INPUT_MODE
    if not any(flag.startswith("--direct_num_workers") for flag in argv):
        # 0 is one per CPU core; in_memory runs one bundle at a time (Beam warns about any
        # other count).
        direct.direct_num_workers = 1 if direct.direct_running_mode == "in_memory" else 0
    return chosen


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    return runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS
