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


def test_exit_now_runs_the_exit_handlers_and_flushes_before_leaving(tmp_path):
    """A command ends through console.exiting.exit_now: its code, everything it printed
    (a megabyte through a pipe, buffered), and the exit handlers' work are all there."""
    import subprocess
    import sys

    from support import REPO

    marker = tmp_path / "handler-ran"
    code = (
        "import atexit, logging, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "from pipeline.console.exiting import exit_now\n"
        "sys.stdout.write('x' * 2**20)\n"
        "logging.getLogger('t').warning('last line')\n"
        "exit_now(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 2**20
    assert done.stderr.endswith("last line\n")
    assert marker.read_text() == "ran"
