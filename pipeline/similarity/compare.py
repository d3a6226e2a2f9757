"""--compare_with: every stored image's nearest images in another output, as Beam transforms.

The same partitioned (IVF) search as the neighbours (find.py), over the union of the two
collections: one pass over both takes the union's mean and a fixed-size sample, k-means
on the sample learns the cells, a second pass puts each row of either side in its few
most similar cells, and inside a cell this output's rows are compared exactly with the
other output's rows only. Each image's candidates from its cells are merged into its top
k. Neither collection is held in one place, and no side input grows with either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.stats import ApproximateQuantiles

from pipeline.common import NAMESPACE, counter, progress
from pipeline.outputs import (
    DECILES,
    FORMATS,
    MATCHES,
    SHARD_TEMPLATE,
    FileKind,
    OptionalOutput,
    RunTarget,
    StoredBatch,
    output_path,
    shard_prefix,
    spill_prefix,
)
from pipeline.similarity.find import (
    ListRecordFiles,
    SampleCandidatesFn,
    SampleFn,
    SearchPlan,
    SimilaritySettings,
    by_bucket,
    cell_members,
    merge_bucket,
    plan_search,
)
from pipeline.similarity.neighbors import SIMILARITY_TOLERANCE, search_across
from pipeline.similarity.spill import GroupThroughFiles, RemoveSpillFilesFn

MATCHES_SCHEMA = pa.schema(
    [("uri", pa.string()), ("match_uri", pa.string()), ("similarity", pa.float32())]
)
OURS, THEIRS = 0, 1  # which collection a cell's rows come from
_SIDE_NAMES = ("ours", "theirs")
# What became of each image: a match at or above the threshold, a nearest image below
# it, or no image of the other output in any of its cells. They add up to the images.
MATCHED, BELOW_THRESHOLD, WITHOUT_CANDIDATE = "matched", "below_threshold", "without_candidate"
_WORKING_FOLDER = "compare"  # the spill files' folder in the run's temporary folder


@dataclass(frozen=True)
class CompareSettings:
    """The other output (as its summary.json names its format and runs), the threshold a
    match reaches, the matches kept per image and the search's cells."""

    other: str
    other_format: str
    other_runs: tuple[str, ...]
    threshold: float
    matches: int
    cell_size: int
    cells_per_image: int
    seed: int

    @property
    def search(self) -> SimilaritySettings:
        """The neighbours' settings that size the same search (cells, merge buckets)."""
        return SimilaritySettings(
            neighbors=self.matches,
            duplicate_threshold=0,
            cell_size=self.cell_size,
            cells_per_image=self.cells_per_image,
            seed=self.seed,
        )


class AssignSideCellsFn(beam.DoFn):
    """A StoredBatch of one collection to (cell, (side, uris, unit rows)) for each cell
    its rows join."""

    def __init__(self, side: int):
        self._side = side

    def process(self, batch: StoredBatch, plan: SearchPlan | None):
        if plan is None or not batch.uris:
            return
        uris = np.asarray(batch.uris, dtype=object)
        for cell, members, rows in cell_members(batch, plan):
            yield cell, (self._side, uris[members].tolist(), rows)


def split_sides(chunks: list) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """A cell's chunks to this output's URIs and rows and the other output's."""
    sides: dict[int, tuple[list[str], list[np.ndarray]]] = {OURS: ([], []), THEIRS: ([], [])}
    for side, uris, rows in chunks:
        sides[side][0].extend(uris)
        sides[side][1].append(rows)
    width = next(rows.shape[1] for _, _, rows in chunks)

    def stacked(rows: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(rows) if rows else np.zeros((0, width), np.float32)

    (ours, our_rows), (theirs, their_rows) = sides[OURS], sides[THEIRS]
    return ours, stacked(our_rows), theirs, stacked(their_rows)


class SearchAcrossCellFn(beam.DoFn):
    """A cell's rows to (bucket, [candidates]): each of this output's images with its k
    most similar images of the other output in the cell (none where the cell has none)."""

    def __init__(self, k: int):
        self._k = k
        self._cells = counter("compare_cells")
        self._cell_rows = beam.metrics.Metrics.distribution(NAMESPACE, "compare_cell_rows")

    def process(self, cell: tuple[int, list], plan: SearchPlan):
        progress.begin("comparing with the other output")
        ours, our_rows, theirs, their_rows = split_sides(cell[1])
        if not ours:
            return
        self._cells.inc()
        self._cell_rows.update(len(ours) + len(theirs))
        yield from by_bucket(
            search_across(ours, our_rows, theirs, their_rows, self._k), plan.buckets
        )


def match_rows(row: dict, threshold: float):
    """A merged row to its matches: the candidates at or above the threshold, most similar
    first (a pair within SIMILARITY_TOLERANCE below it counts, as for duplicates)."""
    for name, similarity in zip(row["neighbors"], row["similarities"], strict=True):
        if similarity < threshold - SIMILARITY_TOLERANCE:
            break
        yield {"uri": row["uri"], "match_uri": name, "similarity": similarity}


def best_match(row: dict, threshold: float):
    """(uri, its most similar image in the other output) where that is a match."""
    for match in match_rows(row, threshold):
        yield match["uri"], match["match_uri"]
        return


def outcome(row: dict, threshold: float) -> str:
    """What became of one image (MATCHED, BELOW_THRESHOLD or WITHOUT_CANDIDATE)."""
    if not row["similarities"]:
        return WITHOUT_CANDIDATE
    return (
        MATCHED if row["similarities"][0] >= threshold - SIMILARITY_TOLERANCE else BELOW_THRESHOLD
    )


def _nearest(row: dict) -> list[float]:
    return row["similarities"][:1]


def describe(
    unused,
    plan: SearchPlan | None,
    images: int,
    other_images: int,
    outcomes: list[tuple[str, int]],
    matches: int,
    deciles: list[float],
    settings: CompareSettings,
) -> dict[str, Any]:
    """What the summary says of the comparison: what was searched, how, and what it found."""
    counted = dict(outcomes)
    searched = plan.describe() if plan else {"images": 0}
    return {
        "with": settings.other,
        "threshold": settings.threshold,
        "matches_per_image": settings.matches,
        "images": images,
        "other_images": other_images,
        **{key: value for key, value in searched.items() if key != "images"},
        "images_matched": counted.get(MATCHED, 0),
        "images_below_threshold": counted.get(BELOW_THRESHOLD, 0),
        "images_without_candidate": counted.get(WITHOUT_CANDIDATE, 0),
        "matches": matches,
        "nearest_similarity_deciles": [round(float(value), 6) for value in deciles],
    }


class CompareWith(OptionalOutput):
    """Stored files and another output's to matches-RUN-*.parquet in the stage.

    Reads `files`, the names of this run's stored files; with --skip_existing the record
    files of the target's earlier runs are compared too, so every image under the output
    is. Gives `matches` (one dict per match row), `matched` ((uri, most similar match)
    for each image with a match), `description` and `files`. Spill files
    go to temp (naming.run_temp_folder), the stage when None, in a folder of their own.
    """

    name = "compared"
    step = "Compare with another output"
    file_kinds = (FileKind(MATCHES, ".parquet"),)
    reads = ("files",)

    def __init__(self, target: RunTarget, settings: CompareSettings, temp: str | None = None):
        super().__init__()
        self._output = target.output
        self._stage = target.stage
        self._temp = output_path(temp or target.stage, _WORKING_FOLDER)
        self._format = FORMATS[target.output_format]
        # Each side's format and output: the other output is read by its own format.
        self._stored = {
            OURS: (target.output_format, target.output),
            THEIRS: (settings.other_format, settings.other),
        }
        self._run_id = target.run_id
        self._earlier_runs = target.earlier_runs
        self._settings = settings

    def final_files(self) -> dict[str, str]:
        return {"matches": output_path(self._output, f"{MATCHES}-*.parquet")}

    def _collections(self, files: beam.PCollection) -> dict[int, beam.PCollection]:
        """Each side's record files: this run's (and the earlier runs' it keeps), and
        those of the runs the other output's summary.json names."""
        settings = self._settings
        ours = files
        if self._earlier_runs:
            ours = files | "List our stored files" >> ListRecordFiles(
                self._format.record_files(self._output), self._earlier_runs
            )
        theirs = files.pipeline | "List their stored files" >> ListRecordFiles(
            FORMATS[settings.other_format].record_files(settings.other), settings.other_runs
        )
        return {OURS: ours, THEIRS: theirs}

    def _read(self, side: int, files: beam.PCollection, what: str) -> beam.PCollection:
        """One side's stored embeddings, read by its own format."""
        stored_format, output = self._stored[side]
        return files | f"Read {_SIDE_NAMES[side]} {what}" >> FORMATS[stored_format].read_batches(
            output
        )

    def expand(self, run: dict[str, beam.PCollection]):
        settings = self._settings
        pipeline = run["files"].pipeline
        spill = spill_prefix(self._temp)
        sides = self._collections(run["files"])
        counts = {
            side: files
            | f"Read URIs ({_SIDE_NAMES[side]})" >> FORMATS[self._stored[side][0]].read_uris()
            | f"Count images ({_SIDE_NAMES[side]})" >> beam.combiners.Count.Globally()
            for side, files in sides.items()
        }
        total = (
            tuple(counts.values())
            | "Both counts" >> beam.Flatten()
            | "Count both" >> beam.CombineGlobally(sum)
        )
        # Each side's batches are reduced to their sample candidates before the two meet:
        # a local runner holds in the launching process whatever a Flatten joins.
        candidates = [
            self._read(side, files, "for the sample")
            | f"Sample candidates ({_SIDE_NAMES[side]})"
            >> beam.ParDo(SampleCandidatesFn(settings.seed), beam.pvalue.AsSingleton(total))
            for side, files in sides.items()
        ]
        plan = (
            tuple(candidates)
            | "Both samples" >> beam.Flatten()
            | "Mean and sample" >> beam.CombineGlobally(SampleFn())
            | "Learn cells" >> beam.Map(plan_search, settings.search)
        )
        plan_side = beam.pvalue.AsSingleton(plan)
        assigned = [
            self._read(side, files, "for the search")
            | f"Assign cells ({_SIDE_NAMES[side]})"
            >> beam.ParDo(AssignSideCellsFn(side), plan=plan_side)
            for side, files in sides.items()
        ]
        merged = (
            tuple(assigned)
            | "Group cells" >> GroupThroughFiles(f"{spill}-cells")
            | "Search cells" >> beam.ParDo(SearchAcrossCellFn(settings.matches), plan=plan_side)
            | "Group candidates" >> GroupThroughFiles(f"{spill}-merge")
            | "Merge candidates" >> beam.FlatMap(merge_bucket, settings.matches)
        )
        matches = merged | "Matches" >> beam.FlatMap(match_rows, settings.threshold)
        matched = merged | "Best matches" >> beam.FlatMap(best_match, settings.threshold)
        written = matches | "Write matches" >> beam.io.WriteToParquet(
            shard_prefix(self._stage, MATCHES, self._run_id),
            MATCHES_SCHEMA,
            codec="snappy",
            file_name_suffix=".parquet",
            shard_name_template=SHARD_TEMPLATE,
        )
        _ = (
            pipeline
            | "Start clean-up" >> beam.Create([None])
            | "Remove spill files"
            >> beam.ParDo(RemoveSpillFilesFn(spill), beam.pvalue.AsList(written))
        )
        outcomes = (
            merged
            | "Outcomes" >> beam.Map(outcome, settings.threshold)
            | "Count outcomes" >> beam.combiners.Count.PerElement()
        )
        deciles = (
            merged
            | "Nearest similarity" >> beam.FlatMap(_nearest)
            | "Deciles" >> ApproximateQuantiles.Globally(DECILES)
        )
        description = (
            pipeline
            | "Start description" >> beam.Create([None])
            | "Describe"
            >> beam.Map(
                describe,
                plan_side,
                beam.pvalue.AsSingleton(counts[OURS]),
                beam.pvalue.AsSingleton(counts[THEIRS]),
                beam.pvalue.AsList(outcomes),
                beam.pvalue.AsSingleton(
                    matches | "Count matches" >> beam.combiners.Count.Globally()
                ),
                beam.pvalue.AsSingleton(deciles),
                settings,
            )
        )
        return {
            "matches": matches,
            "matched": matched,
            "description": description,
            "files": written,
        }
