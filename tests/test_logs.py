"""Worker log lines from Beam's local job service, shown as plain text."""

from __future__ import annotations

import logging

from apache_beam.portability.api import beam_fn_api_pb2

import pipeline.models.extraction
from pipeline.logs import BeamNoiseFilter, WorkerLogFilter

Severity = beam_fn_api_pb2.LogEntry.Severity.Enum


def forwarded(message: str, location: str, severity, level: int) -> logging.LogRecord:
    """A record as Beam's local job service logs one worker LogEntry."""
    entry = beam_fn_api_pb2.LogEntry(severity=severity, message=message, log_location=location)
    return logging.LogRecord(
        "apache_beam.runners.portability.local_job_service", level, __file__, 1,
        "Worker: %s", (str(entry).replace("\n", " "),), None,
    )  # fmt: skip


def test_our_worker_lines_are_kept_as_plain_text():
    record = forwarded(
        'worker 12: 40 images embedded, 9.5 images/s "quoted" ü',
        pipeline.models.extraction.__file__ + ":120",
        Severity.INFO,
        logging.INFO,
    )
    assert WorkerLogFilter().filter(record)
    assert record.getMessage() == 'worker 12: 40 images embedded, 9.5 images/s "quoted" ü'
    assert record.name == "worker"


def test_other_worker_chatter_is_dropped_but_errors_are_kept():
    noise = forwarded("No semi_persistent_directory found", "/x/sdk_worker_main.py:421",
                      Severity.WARN, logging.WARNING)  # fmt: skip
    assert not WorkerLogFilter().filter(noise)
    error = forwarded("bundle failed", "/x/sdk_worker.py:1", Severity.ERROR, logging.ERROR)
    assert WorkerLogFilter().filter(error)
    assert error.getMessage() == "bundle failed"


def test_beams_memory_warning_is_dropped_and_other_warnings_are_kept():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("root", logging.WARNING, __file__, 1, message, (), None)

    noise = record("Resource module is not available for current platform, memory usage ...")
    assert not BeamNoiseFilter().filter(noise)
    assert BeamNoiseFilter().filter(record("Resource exhausted: OOM when allocating tensor"))
