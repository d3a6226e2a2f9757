"""The lines TensorFlow, absl and gRPC write straight to the standard error as they start,
kept off a person's terminal.

Their log levels hide most of them when set before the libraries load
(TF_CPP_MIN_LOG_LEVEL, GRPC_VERBOSITY). TensorFlow's C++ code also writes a few lines
before absl's logging is initialised, which no setting reaches (tensorflow/tensorflow
#62075), and probes for CUDA on a machine without a GPU, logging the failed probe as an
error. So while a run works, the standard error goes through a filter that drops those
lines, and only those; everything else passes, in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Each is a line that says nothing to act on: absl's note that logging is not set up yet,
# oneDNN's "custom operations are on", the search for CUDA's drivers and its failed
# initialisation on a CPU-only machine, the CPU features TensorFlow was not built for,
# and gRPC's note on fork() while its threads run.
CHATTER = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    rb"STDERR"
    rb"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cuda_diagnostics"
    rb"|cpu_feature_guard|fork_posix|cpu_allocator_impl)\.cc:\d+\] )"
)

QUIET_LEVELS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "GRPC_VERBOSITY": "ERROR",  # gRPC's own INFO lines (doc/environment_variables.md)
}


def quiet_environment() -> None:
    """The libraries' documented log levels, for this process and the processes it starts;
    must run before TensorFlow or gRPC is imported. A value already set is kept."""
    for name, value in QUIET_LEVELS.items():
        os.environ.setdefault(name, value)


@contextmanager
def hidden_chatter(write: Callable[[bytes], None] | None = None) -> Iterator[None]:
    """Within the block, lines written to file descriptor 2 reach write (by default the
    standard error as it was) unless they are CHATTER."""
    sys.stderr.flush()
    original = os.dup(2)
    write = write or (lambda line: os.write(original, line))
    reading, writing = os.pipe()
    os.dup2(writing, 2)
    os.close(writing)
    relay = threading.Thread(target=_relay, args=(reading, write), daemon=True)
    relay.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last writer: the relay reads to its end
        relay.join(timeout=10)
        os.close(original)


def _relay(reading: int, write: Callable[[bytes], None]) -> None:
    with os.fdopen(reading, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _pass(line + b"\n", write)
        if pending:
            _pass(pending, write)


def _pass(line: bytes, write: Callable[[bytes], None]) -> None:
    if CHATTER.match(line):
        return
    with contextlib.suppress(OSError):  # nobody reads it any more; the pipe must drain
        write(line)
