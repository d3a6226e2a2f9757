"""What makes a run safe: the checks before any work (preflight), one run per output
(lease), the summary that judges the run, and publishing after the verdict."""

from pipeline.run import preflight
from pipeline.run.lease import LeaseHeldError, read_lease, release_lease, take_lease
from pipeline.run.publish import Publish, PublishFn, PublishPlan, verdict
from pipeline.run.summary import RunFailedError, Summarise, check, read_summary, summarise

__all__ = [
    "LeaseHeldError",
    "Publish",
    "PublishFn",
    "PublishPlan",
    "RunFailedError",
    "Summarise",
    "check",
    "preflight",
    "read_lease",
    "read_summary",
    "release_lease",
    "summarise",
    "take_lease",
    "verdict",
]
