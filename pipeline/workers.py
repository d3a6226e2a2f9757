"""How many worker processes share a machine, and so the cores each one's engine may use."""

from __future__ import annotations

import os

from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions

from pipeline.local_runner import is_local

ONE_PROCESS_PER_VM = "no_use_multiple_sdk_containers"


def engine_threads(options: PipelineOptions, cpus: int | None = None) -> int:
    """The cores each worker process's engine may use: 0 (all of the machine's) where one
    process embeds on each machine, otherwise the machine's cores shared among them.

    Locally, multi_processing starts direct_num_workers processes on this machine (0: one
    per core). Dataflow starts one Python SDK process per vCPU unless
    --experiments=no_use_multiple_sdk_containers, so each gets one core. Engines that
    each used every core would run vCPUs x vCPUs threads on the vCPUs.
    """
    cpus = cpus or os.cpu_count() or 1
    if is_local(options):
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return 0
        processes = direct.direct_num_workers or cpus
        return max(1, cpus // processes) if processes > 1 else 0
    experiments = options.view_as(DebugOptions).experiments or []
    return 0 if ONE_PROCESS_PER_VM in experiments else 1
