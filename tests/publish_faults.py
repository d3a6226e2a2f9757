"""Stopping a publish at one of its steps, as a killed worker or an undeletable file
would: the faults come from outside the code under test (its file acts), never from it."""

from __future__ import annotations

STEPS = ("after the journal", "after some renames", "after all renames", "during the deletes")


class Stopped(BaseException):
    """The process stops here: nothing after this line of the publish runs."""


def stop_publish_at(step: str, monkeypatch, undeletable: str) -> None:
    """Makes the publish stop at step; "during the deletes": the file named undeletable
    refuses deletion, as one under a retention policy does (root ignores file modes)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.outputs import journal

    real_move, real_write, real_delete = journal.move_files, journal.write_json, FileSystems.delete

    def move_none(pairs):
        raise Stopped

    def move_some(pairs):
        real_move(pairs[: max(1, len(pairs) // 2)])
        raise Stopped

    def write_until_the_summary(path, value):
        if path.endswith("summary.json"):
            raise Stopped
        real_write(path, value)

    def delete(paths):
        if any(path.endswith(undeletable) for path in paths):
            raise PermissionError(f"{undeletable}: permission denied")
        real_delete(paths)

    if step == "after the journal":
        monkeypatch.setattr(journal, "move_files", move_none)
    elif step == "after some renames":
        monkeypatch.setattr(journal, "move_files", move_some)
    elif step == "after all renames":
        monkeypatch.setattr(journal, "write_json", write_until_the_summary)
    elif step == "during the deletes":
        monkeypatch.setattr(FileSystems, "delete", delete)
    else:
        raise ValueError(step)
