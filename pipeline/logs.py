"""Console logging for local runs: this package's lines, worker lines made readable."""

from __future__ import annotations

import logging
import os
import re

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Beam's local job service logs each worker record as "Worker: <LogEntry proto as text>".
_WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
_FIELD = r'{}: "((?:[^"\\]|\\.)*)"'


def _field(text: str, name: str) -> str:
    match = re.search(_FIELD.format(name), text)
    if not match:
        return ""
    return match.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape")


class WorkerLogFilter(logging.Filter):
    """Keeps worker records logged by this package, or at ERROR and above, as plain text."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        ours = _PACKAGE_DIR in _field(text, "log_location")
        if not ours and record.levelno < logging.ERROR:
            return False
        message = _field(text, "message")
        if message:
            record.name, record.msg, record.args = "worker", message, ()
        return True


class BeamNoiseFilter(logging.Filter):
    """Drops a warning Beam's RunInference logs for every batch in this process.

    Beam 2.77 sets its `resource` module to None when an unrelated optional import
    (its ModelManager) fails, then warns that memory usage cannot be fetched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Resource module is not available")


def configure() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(BeamNoiseFilter())
    logging.getLogger("pipeline").setLevel(logging.INFO)
    worker = logging.getLogger(_WORKER_LOGGER)
    worker.setLevel(logging.INFO)
    worker.addFilter(WorkerLogFilter())
