"""`python -m MODULE ARGS` in a child forked from an interpreter that has already imported
the pipeline, Keras, TensorFlow and OpenVINO.

A run's own work on the 13 photographs takes about 5 s; importing what it needs takes
another 5 s in every fresh interpreter. multiprocessing's forkserver imports them once per
test process, and forks a child per command: the child runs the module as `python -m`
does (runpy, with the arguments, working directory, environment and standard streams of
a subprocess), so it runs the same code to the same exit status and output. A command
that changes a variable which the imported libraries read as they are imported gets a
fresh interpreter instead, as do the runs that stand for a user's (support.run_cli's
as_user).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOADED = ["pipeline.cli", "pipeline.search", "keras", "tensorflow", "openvino"]

# Variables that the preloaded libraries (or the interpreter) read once, as they start:
# a command that changes one runs in a fresh interpreter.
READ_AT_START = ("PYTHON", "TF_", "KERAS_", "OV_", "CUDA_", "XLA_", "OMP_", "KMP_", "GRPC_")

# google-auth reads the metadata server's address as it is imported; the preloaded
# modules do not import it, so a child that is given one still reads it.
_METADATA_MODULE = "google.auth.compute_engine._metadata"

_context = None

# The largest peak RSS of a child so far in this test process, MB (conftest reports it).
largest_child_mb = 0.0


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOADED)
    return _context


def needs_fresh_interpreter(env: dict[str, str]) -> bool:
    """Whether env changes a variable that is read only as an interpreter starts."""
    changed = {name for name, value in env.items() if os.environ.get(name) != value}
    changed |= set(os.environ) - set(env)
    return any(name.startswith(READ_AT_START) for name in changed)


def run_module(
    module: str, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """What subprocess.run([python, -m, module, *args], capture_output=True, text=True)
    returns, from a forked child (or a fresh interpreter: needs_fresh_interpreter)."""
    command = [sys.executable, "-m", module, *args]
    if needs_fresh_interpreter(env):
        return subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryDirectory(prefix="forked-") as streams:
        out, err = os.path.join(streams, "out"), os.path.join(streams, "err")
        child = _forkserver().Process(
            target=_run_as_main, args=(module, args, str(cwd), dict(env), out, err)
        )
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        stdout, stderr = (Path(path).read_text(errors="replace") for path in (out, err))
        _note_peak(Path(streams, "peak"))
    return subprocess.CompletedProcess(command, child.exitcode, stdout, stderr)


def _note_peak(path: Path) -> None:
    global largest_child_mb
    if path.exists():
        largest_child_mb = max(largest_child_mb, float(path.read_text()))


def _run_as_main(module: str, args: list[str], cwd: str, env: dict, out: str, err: str):
    """In the child: python -m module args, then exit with its status."""
    import resource
    import runpy
    import traceback

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # read TMPDIR again
    if _METADATA_MODULE in sys.modules and any(k.startswith("GCE_METADATA") for k in env):
        raise RuntimeError(f"{_METADATA_MODULE} was imported before its address was set")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = _exit_status(done.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out).with_name("peak").write_text(str(peak_kib / 1024))
    os._exit(code)


def _exit_status(code) -> int:
    """The status python gives SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1
