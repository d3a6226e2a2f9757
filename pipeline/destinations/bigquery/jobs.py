"""BigQuery jobs a retried step can find again: fixed ids per run and step, a new
attempt after a failed one, and the wait that turns a failure into one message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class BigQueryLoadError(RuntimeError):
    """A load job or index statement that BigQuery refused; the message is BigQuery's."""


class Attempts:
    """One step's jobs: ID, then ID_2, ID_3, ... each started after the one before failed.

    Job ids are fixed per run, so a retried bundle finds the jobs it started; one that
    is pending, running or done without error is the step's job, a failed one is
    followed by a new attempt (BigQuery keeps a failed job's id forever).
    """

    def __init__(self, bq, job_id: str, location: str):
        from google.api_core import exceptions

        self._bq, self._base, self._location = bq, job_id, location
        self.jobs: list = []
        while True:
            try:
                self.jobs.append(bq.get_job(self._id(len(self.jobs) + 1), location=location))
            except exceptions.NotFound:
                break

    @property
    def current(self):
        """The job a retried step carries on with, or None if it must start one."""
        if self.jobs and not _failed(self.jobs[-1]):
            return self.jobs[-1]
        return None

    def start(self, insert: Callable[[str], Any]):
        """insert(job_id) under the next attempt's id; a 409 means a concurrent attempt
        of the same bundle started it first, so that job is the step's."""
        from google.api_core import exceptions

        job_id = self._id(len(self.jobs) + 1)
        try:
            job = insert(job_id)
        except exceptions.Conflict:
            job = self._bq.get_job(job_id, location=self._location)
        self.jobs.append(job)
        return job

    def described(self) -> list[dict[str, Any]]:
        """Each attempt's id, state and error, for the summary."""
        return [
            {
                "job_id": job.job_id,
                "state": job.state,
                "error": (job.error_result or {}).get("message"),
            }
            for job in self.jobs
        ]

    def _id(self, attempt: int) -> str:
        return self._base if attempt == 1 else f"{self._base}_{attempt}"


def _failed(job) -> bool:
    return job.state == "DONE" and job.error_result is not None


def write_mode(job) -> str:
    """replace or append, as the job did it (nothing to load: nothing appended)."""
    if job is None:
        return "append"
    if job.job_type == "query":  # TRUNCATE TABLE
        return "replace"
    return "replace" if job.write_disposition == "WRITE_TRUNCATE" else "append"


def wait_for(job, what: str) -> None:
    """Waits for job (None: nothing to wait for); BigQueryLoadError with BigQuery's
    message, and the job's own error details, if it failed."""
    from google.api_core import exceptions

    if job is None:
        return
    try:
        job.result()
    except exceptions.GoogleAPICallError as error:
        details = "; ".join(
            item.get("message", "") for item in (job.errors or []) if item.get("message")
        )
        raise BigQueryLoadError(
            f"BigQuery job {job.job_id} failed {what}: {error.message}"
            + (f" ({details})" if details and details not in error.message else "")
        ) from error
