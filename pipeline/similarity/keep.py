"""What to keep: every stored row's keep and drop_reason, from the near-duplicate groups
and the matches in another output, written into the record files that the run publishes.

The rule: an image with a match in the other output is dropped (`matches:<its most
similar match>`); so is every member of a near-duplicate group but its representative
(`duplicate_of:<representative>`); every other image is kept. A member is within the
threshold of its representative and a matched image of its match, so nothing is dropped
further than the threshold from its reason's image.

The store writes this run's record files to the run's undecided/ folder, which the
searches read. Decisions meet rows by URI (one shuffle of URIs, not of embeddings), then
each record file's dropped rows meet the file, which is written whole, decided, to the
stage under its own name (formats.write_decisions): so no file is ever replaced while a
step may read it. With --skip_existing every earlier run's record file is written so
too, since a new image can change an earlier one's decision, and published over the
old one. No side input grows with the collection.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

import apache_beam as beam

from pipeline.common import counter, progress
from pipeline.outputs import (
    FORMATS,
    OptionalOutput,
    RunTarget,
    output_path,
    relative_name,
    run_of_shard,
)
from pipeline.similarity.find import ListRecordFiles

DUPLICATE_OF, MATCHES = "duplicate_of", "matches"
# Which reason a row dropped for two reasons gives: the match in the other output first.
_PRECEDENCE = (MATCHES, DUPLICATE_OF)


def reason_kind(reason: str) -> str:
    """duplicate_of or matches: the part of a drop reason before its URI."""
    return reason.split(":", 1)[0]


def first_reason(reasons: Iterable[str]) -> str:
    """The reason a row dropped for several gives: a match before a duplicate, then the
    smallest, so that every retry decides alike."""
    return min(reasons, key=lambda reason: (_PRECEDENCE.index(reason_kind(reason)), reason))


def rows_by_file(joined: tuple[str, dict]):
    """(uri, {files, reasons}) to (file, (uri, reason)) for a dropped row of a file."""
    uri, found = joined
    reasons = list(found["reasons"])
    if not reasons:
        return
    reason = first_reason(reasons)
    for path in found["files"]:
        yield path, (uri, reason)


class RecordUrisFn(beam.DoFn):
    """A record file to (uri, file) for every row it lists."""

    def __init__(self, output_format: str):
        self._format = FORMATS[output_format]

    def process(self, path: str):
        for uri in self._format.uris_in(path):
            yield uri, path


class WriteDecisionsFn(beam.DoFn):
    """(record file, {file, dropped}) to the file written with its decisions; yields the
    staged name, and (tagged COUNTS) its rows and dropped rows by reason. This run's
    undecided file and an earlier run's published one both go to the stage under their
    own names (the earlier one published over the old)."""

    COUNTS = "counts"

    def __init__(self, target: RunTarget):
        self._format = FORMATS[target.output_format]
        self._output = target.output
        self._undecided = target.undecided
        self._stage = target.stage
        self._rewritten = counter("keep_files_rewritten")

    def destination(self, path: str) -> str:
        """Where path's decided copy is staged: its name under undecided/ (this run's) or
        under the output (an earlier run's), in the stage."""
        try:
            name = relative_name(self._undecided, path)
        except ValueError:
            name = relative_name(self._output, path)
        return output_path(self._stage, name)

    def process(self, joined: tuple[str, dict]):
        progress.begin("deciding what to keep")
        path, found = joined
        # Only the run's record files: no dropped row names another.
        if list(found["file"]):
            dropped = dict(found["dropped"])
            destination = self.destination(path)
            rows = self._format.write_decisions(path, destination, dropped)
            self._rewritten.inc()
            kinds = collections.Counter(map(reason_kind, dropped.values()))
            yield destination
            yield beam.pvalue.TaggedOutput(self.COUNTS, Decided(rows, kinds))


@dataclass(frozen=True)
class Decided:
    """What a rewrite decided: its rows, the dropped ones by reason, the files."""

    rows: int = 0
    dropped: collections.Counter = field(default_factory=collections.Counter)
    files: int = 1

    def __add__(self, other: Decided) -> Decided:
        return Decided(
            self.rows + other.rows, self.dropped + other.dropped, self.files + other.files
        )

    def describe(self) -> dict:
        """What the summary says of the decisions."""
        by_reason = {kind: self.dropped.get(kind, 0) for kind in (DUPLICATE_OF, MATCHES)}
        total = sum(by_reason.values())
        return {
            "kept": self.rows - total,
            "dropped": total,
            "dropped_by_reason": by_reason,
            "files_rewritten": self.files,
        }


def _total(decided: Iterable[Decided]) -> Decided:
    return sum(decided, Decided(files=0))


class KeepDecisions(OptionalOutput):
    """Every stored row's keep and drop_reason, written into the record files.

    Reads `files` (this run's stored files, undecided) and what the searches gave:
    `duplicate_of` (FindSimilar) and `matched` (CompareWith). Gives `files` (every record
    file written decided, all in the stage), `decided` (this run's among them) and a
    `description`.
    """

    name = "keep"
    step = "Decide what to keep"
    reads = ("files", "duplicate_of", "matched")

    def __init__(self, target: RunTarget):
        super().__init__()
        self._target = target

    def expand(self, run: dict[str, beam.PCollection]):
        target = self._target
        files = run["files"]
        if target.earlier_runs:
            stored_format = FORMATS[target.output_format]
            files = files | "List stored files" >> ListRecordFiles(
                stored_format.record_files(target.output), target.earlier_runs
            )
        reasons = tuple(
            run[name] | f"Reasons: {name}" >> beam.Map(_reason, kind)
            for name, kind in _REASON_KINDS.items()
            if name in run
        ) | "Every reason" >> beam.Flatten(pipeline=files.pipeline)
        rows = files | "Rows' URIs" >> beam.ParDo(RecordUrisFn(target.output_format))
        dropped_rows = {"files": rows, "reasons": reasons} | "By URI" >> beam.CoGroupByKey()
        by_file = dropped_rows | "Dropped rows by file" >> beam.FlatMap(rows_by_file)
        rewritten = (
            {"file": files | "Each file" >> beam.Map(lambda path: (path, None)), "dropped": by_file}
            | "By file" >> beam.CoGroupByKey()
            | "Write decisions"
            >> beam.ParDo(WriteDecisionsFn(target)).with_outputs(
                WriteDecisionsFn.COUNTS, main="files"
            )
        )
        description = (
            rewritten[WriteDecisionsFn.COUNTS]
            | "Count" >> beam.CombineGlobally(_total)
            | "Describe" >> beam.Map(Decided.describe)
        )
        run_id = target.run_id
        ours = rewritten.files | "This run's files" >> beam.Filter(
            lambda path: run_of_shard(path) == run_id
        )
        return {"files": rewritten.files, "decided": ours, "description": description}


# What each search gives, (uri, the other image), and the reason it makes.
_REASON_KINDS = {"duplicate_of": DUPLICATE_OF, "matched": MATCHES}


def _reason(found: tuple[str, str], kind: str) -> tuple[str, str]:
    uri, other = found
    return uri, f"{kind}:{other}"
