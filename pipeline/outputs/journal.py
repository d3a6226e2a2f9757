"""The publish journal: what a passed run's publish renames and deletes, written before
its first rename. Whoever finds a journal (the run's retried bundle, the next run, a
search) rolls it forward from wherever it stopped, so that summary.json and the files
it names always agree, and a crash never leaves two runs' rows behind.

Anything under the output may have been written by someone else: a journal names files
only relative to the output (or the Vector Search folder, by the shard names a run
writes there), each name checked to stay inside its folder before anything is done.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipeline.common import UnsafeNameError, plain_parts, read_json, write_json
from pipeline.outputs.naming import (
    EMBEDDINGS_DIRECTORY,
    JOURNAL,
    NPY_METADATA,
    RUN_ID_PATTERN,
    RUNS,
    SUMMARY,
    VECTORS,
    matching_files,
    output_path,
    run_folder,
)

_LOG = logging.getLogger(__name__)

STAGED_VECTORS = "vectors"  # the Vector Search files' folder inside the run's folder
# What a run writes, and may delete, in the Vector Search folder: its shards, and the
# temporary folders a killed write left there.
_VECTOR_NAME = re.compile(
    rf"({VECTORS}-{RUN_ID_PATTERN}-\d{{5}}-of-\d{{5}}\.json|beam-temp-[A-Za-z0-9._-]+/?)"
)


class JournalError(ValueError):
    """The output holds a journal this pipeline did not write, or cannot act on."""


class UnfinishedPublishError(RuntimeError):
    """A publish that could not be carried to its end now; its journal stays."""


@dataclass(frozen=True)
class Journal:
    """One passed run's publish.

    staged: names under the run's folder, each published under the same name in the
    output (those under vectors/ in vector_folder); replaced: names under the output
    that the published files replace (a folder ends in /); replaced_vectors: names in
    vector_folder likewise; summary: summary.json as the run leaves it; npy_metadata:
    written beside an npy run's files.
    """

    run_id: str
    staged: tuple[str, ...]
    replaced: tuple[str, ...]
    summary: dict[str, Any]
    npy_metadata: dict[str, Any] | None = None
    vector_folder: str | None = None
    replaced_vectors: tuple[str, ...] = ()

    def moves(self, output: str) -> list[tuple[str, str]]:
        """(staged path, published path) of each staged file."""
        stage = run_folder(output, self.run_id)
        return [
            (output_path(stage, name), self.published_path(output, name)) for name in self.staged
        ]

    def published_path(self, output: str, name: str) -> str:
        return published_path(output, self.vector_folder, name)

    def deletes(self, output: str) -> list[str]:
        """The paths the publish deletes, folders as FileSystems.delete takes them."""
        paths = [output_path(output, name) for name in self.replaced]
        if self.vector_folder:
            paths += [output_path(self.vector_folder, name) for name in self.replaced_vectors]
        return [as_folder(path) if path.endswith("/") else path for path in paths]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "staged": list(self.staged),
            "replaced": list(self.replaced),
            "replaced_vectors": list(self.replaced_vectors),
            "vector_folder": self.vector_folder,
            "npy_metadata": self.npy_metadata,
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, value: Any) -> Journal:
        """The journal a JSON object describes; JournalError naming what is wrong."""
        if not isinstance(value, dict):
            raise JournalError("not a JSON object")
        run_id = value.get("run_id")
        if not isinstance(run_id, str) or not re.fullmatch(RUN_ID_PATTERN, run_id):
            raise JournalError(f"run_id {run_id!r} is not a run id")
        summary = value.get("summary")
        if not isinstance(summary, dict) or summary.get("run_id") != run_id:
            raise JournalError("its summary is not the run's")
        npy_metadata = value.get("npy_metadata")
        if npy_metadata is not None and not isinstance(npy_metadata, dict):
            raise JournalError("npy_metadata is not an object")
        vector_folder = value.get("vector_folder")
        if vector_folder is not None and not isinstance(vector_folder, str):
            raise JournalError("vector_folder is not a path")
        staged = _names(value, "staged")
        replaced = _names(value, "replaced")
        replaced_vectors = _names(value, "replaced_vectors")
        vectors = f"{STAGED_VECTORS}/"
        outside = [
            name
            for name in [
                *(name[len(vectors) :] for name in staged if name.startswith(vectors)),
                *replaced_vectors,
            ]
            if not _VECTOR_NAME.fullmatch(name)
        ]
        if outside:
            raise JournalError(f"{outside[0]!r} is not a name a run writes in a vector folder")
        return cls(run_id, staged, replaced, summary, npy_metadata, vector_folder, replaced_vectors)


def published_path(output: str, vector_folder: str | None, name: str) -> str:
    """Where a file staged as name in the run's folder is published: the same name under
    the output, or, under vectors/, in the Vector Search folder."""
    vectors = f"{STAGED_VECTORS}/"
    if vector_folder and name.startswith(vectors):
        return output_path(vector_folder, name[len(vectors) :])
    return output_path(output, name)


def _names(value: dict, key: str) -> tuple[str, ...]:
    names = value.get(key, [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise JournalError(f"{key} is not a list of names")
    escaping = [name for name in names if not is_inside_name(name)]
    if escaping:
        raise JournalError(f"{escaping[0]!r} in {key} is not a name inside the folder")
    return tuple(names)


def is_inside_name(name: str) -> bool:
    """Whether name, joined to a folder, stays inside it: plain segments (common.plain_parts),
    a folder's trailing slash allowed."""
    try:
        plain_parts(name[:-1] if name.endswith("/") else name)
    except UnsafeNameError:
        return False
    return True


def journal_path(output: str) -> str:
    return output_path(output, JOURNAL)


def write_journal(output: str, journal: Journal) -> None:
    write_json(journal_path(output), journal.to_json())


def read_journal(output: str) -> Journal | None:
    """The output's journal, or None; JournalError for one this pipeline did not write."""
    path = journal_path(output)
    try:
        value = read_json(path)
        return None if value is None else Journal.from_json(value)
    except (ValueError, UnicodeDecodeError) as error:
        raise JournalError(
            f"{path} is not a publish journal this pipeline writes ({error}); check the "
            "output, then delete the file to give up that publish"
        ) from error


def roll_forward(output: str) -> str | None:
    """Finishes the publish a journal under output describes; returns its run id, or
    None when there was none. Raises JournalError, or UnfinishedPublishError."""
    journal = read_journal(output)
    if journal is None:
        return None
    _LOG.warning("finishing the publish of run %s, which stopped midway", journal.run_id)
    finish(output, journal)
    return journal.run_id


def finish(output: str, journal: Journal) -> None:
    """Carries the journal's publish out from wherever it stopped: the renames, the
    summary, the deletes, the run's folder, then the journal. Each act is idempotent,
    and the journal is looked at again before the summary and the deletes, so that a
    second finisher that lost the race stops instead of undoing a later run's."""
    try:
        move_files(journal.moves(output))
        if journal.npy_metadata is not None:
            folder = output_path(output, f"{EMBEDDINGS_DIRECTORY}/{journal.run_id}")
            write_json(output_path(folder, NPY_METADATA), journal.npy_metadata)
        if not _still_open(output, journal):
            return
        # From here on readers of summary.json see this run, whose files are all out.
        write_json(output_path(output, SUMMARY), journal.summary)
        if not _still_open(output, journal):
            return
        delete_paths([*journal.deletes(output), as_folder(run_folder(output, journal.run_id))])
        runs = output_path(output, RUNS)
        if FileSystems.get_filesystem(runs).has_dirs() and not matching_files([f"{runs}/**"]):
            delete_paths([runs])  # an empty folder, where there are folders
        delete_paths([journal_path(output)])
    except JournalError:
        raise
    except Exception as error:
        raise UnfinishedPublishError(
            f"the publish of run {journal.run_id} under {output} stopped: {_reason(error)}; "
            f"{journal_path(output)} stays, and the next run or search there finishes it"
        ) from error


def _still_open(output: str, journal: Journal) -> bool:
    current = read_journal(output)
    return current is not None and current.run_id == journal.run_id


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- Idempotent file acts: a retry finds less to do ----------------------------------


def move_files(pairs: list[tuple[str, str]]) -> None:
    """Renames each staged file that is still there; one already moved is skipped.

    Raises JournalError for a file that is neither staged nor published: it was lost.
    """
    todo = [(src, dst) for src, dst in pairs if FileSystems.exists(src)]
    moved = set(pairs) - set(todo)
    lost = sorted(src for src, dst in moved if not FileSystems.exists(dst))
    if lost:
        raise JournalError(
            f"{lost[0]} is neither staged nor published ({len(lost)} such file(s)): "
            "something else deleted it; check the output, then delete the journal to give "
            "up that publish"
        )
    if not todo:
        return
    for _, dst in todo:
        if FileSystems.get_filesystem(dst).has_dirs():
            os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        FileSystems.rename([src for src, _ in todo], [dst for _, dst in todo])
    except Exception:
        # Another finisher may have moved some first: only a file still staged is a failure.
        if any(FileSystems.exists(src) or not FileSystems.exists(dst) for src, dst in todo):
            raise


def delete_paths(paths: list[str]) -> None:
    """Deletes what exists of paths (a folder with all it holds); a retry finds less."""
    for path in paths:
        try:
            FileSystems.delete([path])
        except Exception as error:
            if still_there(path):
                raise
            _LOG.debug("already gone: %s (%s)", path, error)
        # Beam's recursive gs:// delete only logs the objects it could not delete.
        if path.endswith("/") and still_there(path):
            raise OSError(f"{path}: some files could not be deleted")


def still_there(path: str) -> bool:
    """Whether a file, or a folder (or object prefix) with anything in it, is there."""
    return FileSystems.exists(path.rstrip("/")) or bool(matching_files([f"{path.rstrip('/')}/**"]))


def as_folder(path: str) -> str:
    """A folder as FileSystems.delete takes it: itself where there are folders, otherwise
    the prefix of everything under it."""
    has_dirs = FileSystems.get_filesystem(path).has_dirs()
    return path.rstrip("/") if has_dirs else path.rstrip("/") + "/"
