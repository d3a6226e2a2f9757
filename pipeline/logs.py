"""Console logging for local runs: this package's lines, worker lines made readable, and
the libraries' own logs kept quiet unless --verbose asks for them.

Light to import: the command line reads its flags for logging before it imports Beam,
gRPC or TensorFlow, which read their log levels as they load.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

QUIET_LEVELS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "GRPC_VERBOSITY": "ERROR",  # gRPC's INFO lines, fork()'s among them (read at import)
}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")

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


def flag_given(argv: Sequence[str], name: str) -> bool:
    """Whether a boolean flag is on in argv, spelt as the parser takes it: --name,
    --name=VALUE or --name VALUE; the last one counts."""
    flag, on = f"--{name}", False
    for index, argument in enumerate(argv):
        if argument == flag:
            following = argv[index + 1].strip().lower() if index + 1 < len(argv) else ""
            on = following not in _FALSE
        elif argument.startswith(flag + "="):
            on = argument.partition("=")[2].strip().lower() in _TRUE
    return on


def quiet_environment(verbose: bool) -> None:
    """The libraries' documented log levels, unless verbose, for this process and those it
    starts; before TensorFlow and gRPC are imported. A value already set is kept."""
    if not verbose:
        for name, value in QUIET_LEVELS.items():
            os.environ.setdefault(name, value)


def configure(verbose: bool = False) -> None:
    """This package's warnings (its progress too, with verbose) and every library's
    errors; with verbose, the libraries' warnings as well."""
    level = logging.WARNING if verbose else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(BeamNoiseFilter())
    logging.getLogger("pipeline").setLevel(logging.INFO if verbose else logging.WARNING)
    worker = logging.getLogger(_WORKER_LOGGER)
    worker.setLevel(logging.INFO)
    worker.addFilter(WorkerLogFilter())
