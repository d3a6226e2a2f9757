"""One run per output: a lease file, OUTPUT/_lease.json, taken before any work.

A run creates the lease only if none exists and deletes it when it is done. Another
run finding it refuses to start, unless the lease is stale (older than the holder said
it could be) or the operator names its holder with --break_lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.options import LEASE_STALE_AFTER_HOURS, UsageError
from pipeline.outputs import LEASE, output_path

_LOG = logging.getLogger(__name__)

DEFAULT_STALE_AFTER_S = LEASE_STALE_AFTER_HOURS * 3600.0
UNKNOWN_HOLDER = "unknown"  # the run id shown for a lease whose content cannot be read


class LeaseHeldError(UsageError):
    """Another run holds the output's lease."""


@dataclass(frozen=True)
class _Found:
    holder: dict[str, Any]  # the lease's JSON, or a description of an unreadable lease
    generation: int | None = None  # gs://: the object generation read


def take_lease(
    output: str,
    run_id: str,
    started_at: float,
    *,
    runner: str,
    break_lease: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    process_bound: bool = False,
) -> None:
    """Creates OUTPUT/_lease.json for run_id, or raises LeaseHeldError.

    A lease held by another run is replaced only when it is stale (older than the
    stale_after_s its holder recorded, or process_bound and its process on this host
    has ended) or when break_lease is its holder's run id; either replacement is logged
    as a warning. runner describes who runs (the runner, and the job name where there is
    one). process_bound: the run lives and dies with this process (a local runner; not
    a launcher, which exits once the job is submitted).
    """
    if stale_after_s <= 0:
        raise ValueError(f"stale_after_s must be positive, got {stale_after_s}")
    lease = _new_lease(run_id, started_at, runner, stale_after_s, process_bound)
    path = output_path(output, LEASE)
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        _take_local(path, lease, break_lease)
    elif scheme == "gs":
        _take_gcs(path, lease, break_lease)
    else:
        raise _unsupported(output)


def release_lease(output: str, run_id: str) -> None:
    """Deletes the output's lease if run_id holds it; otherwise only logs.

    Idempotent: a bundle that runs twice releases nothing the second time.
    """
    path = output_path(output, LEASE)
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        local = _local(path)
        with _locked(os.path.dirname(local)) as exists:
            found = _read_local(local) if exists else None
            if found is not None and found.holder.get("run_id") == run_id:
                with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile
                    os.unlink(local)
                _LOG.debug("%s: run %s released its lease", output, run_id)
                return
    elif scheme == "gs":
        found = _read_gcs(path)
        if found is not None and found.holder.get("run_id") == run_id:
            from google.api_core import exceptions

            try:
                _blob(path).delete(if_generation_match=found.generation)
                _LOG.debug("%s: run %s released its lease", output, run_id)
                return
            except exceptions.NotFound:
                found = None  # deleted meanwhile, e.g. by our own retried request
            except exceptions.PreconditionFailed:
                found = _read_gcs(path)  # replaced meanwhile: no longer ours
    else:
        raise _unsupported(output)
    holder = "no run" if found is None else f"run {found.holder.get('run_id')}"
    _LOG.info("%s: run %s has no lease to release (%s holds it)", output, run_id, holder)


def read_lease(output: str) -> dict[str, Any] | None:
    """The output's lease as JSON, or None when there is none.

    A lease whose content cannot be read is described with run_id "unknown", the
    reason under "unreadable", and the file's modification time as its start.
    """
    path = output_path(output, LEASE)
    scheme = FileSystems.get_scheme(path)
    if scheme in (None, "file"):
        found = _read_local(_local(path))
    elif scheme == "gs":
        found = _read_gcs(path)
    else:
        raise _unsupported(output)
    return None if found is None else found.holder


# --- What a lease holds, and when it may be replaced ------------------------------------


def _new_lease(
    run_id: str, started_at: float, runner: str, stale_after_s: float, process_bound: bool
) -> dict:
    return {
        "run_id": run_id,
        "started_at": _iso(started_at),
        "started_at_epoch": started_at,
        "stale_after_s": stale_after_s,
        "stale_at": _iso(started_at + stale_after_s),
        "host": socket.gethostname(),
        "user": _user(),
        "pid": os.getpid(),
        "pid_namespace": _pid_namespace(),
        "process_bound": process_bound,
        "runner": runner,
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        return str(os.getuid())


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _encode(lease: dict) -> bytes:
    return (json.dumps(lease, indent=2) + "\n").encode()


def _decode(data: bytes, written_at: float) -> dict[str, Any]:
    try:
        holder = json.loads(data)
        if isinstance(holder, dict) and isinstance(holder.get("run_id"), str):
            float(holder["started_at_epoch"])
            return holder
        reason = "no run_id"
    except (ValueError, KeyError, TypeError) as error:
        reason = f"{type(error).__name__}: {error}"
    return {
        "run_id": UNKNOWN_HOLDER,
        "unreadable": reason,
        "started_at": _iso(written_at),
        "started_at_epoch": written_at,
    }


def _age_s(holder: dict) -> float:
    return max(0.0, time.time() - float(holder["started_at_epoch"]))


def _is_stale(holder: dict, stale_after_s: float) -> bool:
    """Stale once older than the holder's own stale_after_s (ours, if it recorded none)."""
    return _age_s(holder) > float(holder.get("stale_after_s", stale_after_s))


def _pid_namespace() -> str | None:
    """Which pids this process sees (containers that share a host name may not)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _ended_here(holder: dict) -> bool:
    """Whether the holder was a run bound to a process on this host, among the pids this
    process sees, that has ended (a killed local run). A pid reused since reads as
    alive: the lease is then kept."""
    if not holder.get("process_bound") or holder.get("host") != socket.gethostname():
        return False
    if holder.get("pid_namespace") is None or holder["pid_namespace"] != _pid_namespace():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False


def _replacement(holder: dict, lease: dict, break_lease: str | None) -> str | None:
    """Why the holder's lease may be replaced by ours; None when it may not."""
    if holder["run_id"] == break_lease:
        return "as --break_lease asked"
    if _is_stale(holder, lease["stale_after_s"]):
        return "stale"
    if _ended_here(holder):
        return f"its process {holder['pid']} on this host has ended"
    return None


def _held(path: str, holder: dict, lease: dict, break_lease: str | None) -> LeaseHeldError:
    holder_id = holder["run_id"]
    hours = float(holder.get("stale_after_s", lease["stale_after_s"])) / 3600
    since = f"started {holder['started_at']}, {_age_s(holder) / 3600:.1f} h ago"
    if holder_id == UNKNOWN_HOLDER:
        how = f"delete {path} if no run is writing there"
        return LeaseHeldError(
            f"{path} is unreadable ({holder['unreadable']}; written {since}): one output "
            f"takes one run at a time, so run {lease['run_id']} does not start; {how}, "
            f"or it is replaced {hours:g} h after it was written"
        )
    where = ", ".join(f"{key} {holder[key]}" for key in ("host", "runner") if holder.get(key))
    refused = f"; --break_lease {break_lease} names another run" if break_lease else ""
    return LeaseHeldError(
        f"{path}: run {holder_id} holds this output ({since}{', ' if where else ''}{where})"
        f"{refused}; one output takes one run at a time: wait for it to finish, or, if it "
        f"is no longer running, rerun with --break_lease {holder_id} (it counts as stale, "
        f"and is replaced, {hours:g} h after its start)"
    )


def _warn_broken(path: str, holder: dict, lease: dict, why: str) -> None:
    _LOG.warning(
        "%s: breaking the lease of run %s (started %s, %.1f h ago; %s), run %s takes it",
        path,
        holder["run_id"],
        holder["started_at"],
        _age_s(holder) / 3600,
        why,
        lease["run_id"],
    )


def _unsupported(output: str) -> UsageError:
    return UsageError(
        f"--output {output}: a lease (one run per output) can be taken only on a local "
        "folder or gs://; give one of those"
    )


# --- Local folders: every lease operation under an exclusive lock of the folder ----------
# Reading a stale lease and then replacing it is no compare-and-swap: a racer could
# take the output in between (and a rename-based break can move a newer lease away).
# flock on the folder serialises the operations of every process and thread; the
# kernel drops the lock when its holder dies, so a crash never leaves the folder locked.


def _local(path: str) -> str:
    return path.removeprefix("file://")


@contextlib.contextmanager
def _locked(folder: str, *, create: bool = False) -> Iterator[bool]:
    """Holds an exclusive lock of folder; yields whether the folder exists."""
    if create:
        os.makedirs(folder, exist_ok=True)
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _take_local(path: str, lease: dict, break_lease: str | None) -> None:
    local = _local(path)
    data = _encode(lease)
    with _locked(os.path.dirname(local), create=True):
        found = None
        while found is None:  # only a process that ignores the lock (rm) makes it vanish
            try:
                _write_file(os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), data)
                return
            except FileExistsError:
                found = _read_local(local)
        holder = found.holder
        if holder["run_id"] == lease["run_id"]:
            return  # taken already, by this very run
        why = _replacement(holder, lease, break_lease)
        if why is None:
            raise _held(path, holder, lease, break_lease)
        partial = f"{local}.{uuid.uuid4().hex}.partial"
        _write_file(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), data)
        os.replace(partial, local)
        _warn_broken(path, holder, lease, why)


def _write_file(descriptor: int, data: bytes) -> None:
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_local(local: str) -> _Found | None:
    try:
        with open(local, "rb") as handle:
            data = handle.read()
            written_at = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return None
    return _Found(_decode(data, written_at))


# --- Cloud Storage: object generations as the compare-and-swap --------------------------


def _blob(path: str):
    """The lease object, through a client made as Beam's own gs:// calls make theirs.

    Beam looks credentials up once per process (Application Default Credentials, the
    metadata server on Dataflow); google-cloud-storage honours STORAGE_EMULATOR_HOST.
    A client per call: clients are not meant to be shared between threads.
    """
    from apache_beam.io.gcp import gcsio
    from apache_beam.options.pipeline_options import PipelineOptions

    bucket, name = gcsio.parse_gcs_path(path)
    return gcsio.create_storage_client(PipelineOptions()).bucket(bucket).blob(name)


def _read_gcs(path: str) -> _Found | None:
    from google.api_core import exceptions

    for _ in range(5):
        blob = _blob(path)
        try:
            blob.reload()
            # Before the download, which may reset the properties from its own headers.
            generation, created = blob.generation, blob.time_created
            data = blob.download_as_bytes(if_generation_match=generation)
        except exceptions.NotFound:
            return None
        except exceptions.PreconditionFailed:
            continue  # replaced between the two reads: read the new one
        if not generation:
            raise RuntimeError(f"{path}: Cloud Storage gave no generation for the lease")
        written_at = created.timestamp() if created else time.time()
        return _Found(_decode(data, written_at), int(generation))
    raise LeaseHeldError(f"{path}: replaced again and again while being read; run again")


def _take_gcs(path: str, lease: dict, break_lease: str | None) -> None:
    from google.api_core import exceptions

    data = _encode(lease)
    expected, broken = 0, None  # generation 0: only if no object exists
    for _ in range(5):
        try:
            _blob(path).upload_from_string(
                data, content_type="application/json", if_generation_match=expected
            )
        except exceptions.PreconditionFailed:
            pass
        else:
            if broken is not None:
                _warn_broken(path, *broken)
            return
        found = _read_gcs(path)
        if found is None:
            expected, broken = 0, None  # released meanwhile: create it
            continue
        holder = found.holder
        if holder["run_id"] == lease["run_id"]:
            return  # ours: a retried request whose first attempt had succeeded
        why = _replacement(holder, lease, break_lease)
        if why is None:
            raise _held(path, holder, lease, break_lease)
        # Replace exactly the generation judged; a racer that replaced it first wins.
        expected, broken = found.generation, (holder, lease, why)
    raise LeaseHeldError(f"{path}: taken and released again and again meanwhile; run again")
