"""What every optional output of a run (neighbours, Vector Search files, the map, BigQuery)
takes and gives, so that build_pipeline wires them all one way."""

from __future__ import annotations

import apache_beam as beam


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
    step's name in the job graph.
    """

    name: str = ""
    step: str = ""
    reads: tuple[str, ...] = ()

    def final_files(self) -> dict[str, str]:
        return {}
