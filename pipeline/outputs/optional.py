"""What every optional output of a run (neighbours, Vector Search files, the map, BigQuery)
takes and gives, so that build_pipeline wires them all one way."""

from __future__ import annotations

from typing import ClassVar

import apache_beam as beam

from pipeline.outputs.formats import FORMATS
from pipeline.outputs.kinds import FileKind
from pipeline.outputs.sinks import WriteFailures

# Every OptionalOutput class defined in this process, in the order defined.
_DEFINED: list[type[OptionalOutput]] = []


class OptionalOutput(beam.PTransform):
    """An output a run writes only when its options ask for it.

    Input: a dict of the run's PCollections, those of `reads` that the run has:
      embeddings  (ImageKey, embedding) as extracted, thumbnails riding in the keys
      stored      the same, once stored
      files       the names of this run's stored embedding files
      embedded    how many images this run embedded (one int)
      failures    every Failure
      earlier     the URIs earlier runs embedded (with --skip_existing)
      summary     the run's summary (one dict)
      passed      one element once the run has passed its check and every file is staged
    and whatever an earlier output gave (neighbors, groups).
    Output: a dict of `files` (the names it staged in the run's folder), `description`
    (one dict the run records under `name`) or both, and what a later output reads.
    `final_files`: what the summary lists under "outputs" for it, by name. `step`: its
    step's name in the job graph. `file_kinds`: the kinds of file it publishes, which
    each run's publish replaces (whether or not that run writes the output).
    """

    name: str = ""
    step: str = ""
    reads: tuple[str, ...] = ()
    file_kinds: ClassVar[tuple[FileKind, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _DEFINED.append(cls)

    def final_files(self) -> dict[str, str]:
        return {}


def every_file_kind() -> tuple[FileKind, ...]:
    """The kinds of file the outputs publish, each once: every embedding format's record
    files, the dead letter's, and those of every optional output defined."""
    kinds = [kind for stored in FORMATS.values() for kind in stored.file_kinds]
    kinds += WriteFailures.file_kinds
    kinds += [kind for output in _DEFINED for kind in output.file_kinds]
    return tuple(dict.fromkeys(kinds))
