"""Every stored image's nearest neighbours and near-duplicate groups, as Beam transforms.

The search is partitioned (IVF): after counting the stored URIs, one pass over the stored
embeddings takes their mean and a fixed-size sample (in a random projection); spherical
k-means on the sample learns the cells; a second pass puts each embedding in its few
most similar cells; search inside a cell is exact; each image's candidates from its
cells are merged into its top k. Up to one cell's worth of images the search is exact.
No step holds more embeddings than a cell, a sample, a merge bucket or a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from pipeline.common import NAMESPACE, counter, progress
from pipeline.outputs import (
    DUPLICATES,
    FORMATS,
    NEIGHBORS,
    SHARD_TEMPLATE,
    FileKind,
    OptionalOutput,
    RunTarget,
    StoredBatch,
    matching_files,
    of_runs,
    output_path,
    shard_prefix,
    spill_prefix,
)
from pipeline.similarity.bands import BandPairs
from pipeline.similarity.duplicates import (
    COMPONENT_PAIRS_WARNING,
    ComponentStatsFn,
    GroupComponents,
    WriteGroupsFn,
    cell_links,
    number_groups,
    representatives,
)
from pipeline.similarity.neighbors import (
    coarse_basis,
    coarse_rows,
    merge_neighbours,
    nearest_cells,
    search_cell,
    train_centroids,
    unit_rows,
    uri_rank,
)
from pipeline.similarity.spill import GroupThroughFiles, RemoveSpillFilesFn

SAMPLE_ROWS = 65_536  # the k-means sample: 65,536 projected rows of 256 float32, 64 MiB
MAX_CELLS = 2_048  # beyond this many cells, cells grow instead (k-means time)
_MERGE_ENTRIES = 500_000  # candidate neighbours one merge bucket holds

NEIGHBORS_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("neighbors", pa.list_(pa.string())),
        ("similarities", pa.list_(pa.float32())),
    ]
)


@dataclass(frozen=True)
class SimilaritySettings:
    neighbors: int  # k; 0 for none
    duplicate_threshold: float  # 0 for no groups
    cell_size: int
    cells_per_image: int
    seed: int


@dataclass(frozen=True)
class SearchPlan:
    """What the second pass needs: the mean, the cells' centroids and the merge buckets."""

    count: int
    mean: np.ndarray
    basis: np.ndarray  # (d, COARSE_DIMENSIONS): the projection the cells live in
    centroids: np.ndarray  # (cells, COARSE_DIMENSIONS) unit rows; one row: exact search
    cells_per_image: int
    buckets: int

    @property
    def exact(self) -> bool:
        return len(self.centroids) == 1

    def describe(self) -> dict[str, Any]:
        return {
            "images": self.count,
            "method": "exact" if self.exact else "ivf",
            "cells": len(self.centroids),
            "cells_per_image": self.cells_per_image,
            "centred": True,
        }


class _Sample:
    """Count and sum of every row, and the projections of the SAMPLE_ROWS rows whose URIs
    rank smallest."""

    def __init__(self):
        self.count = 0
        self.total: np.ndarray | None = None
        self.ranks = np.empty(0, dtype=np.uint64)
        self.rows: np.ndarray | None = None

    def add(self, count: int, total: np.ndarray, ranks: np.ndarray, rows: np.ndarray) -> None:
        if count == 0:
            return
        self.count += count
        self.total = total if self.total is None else self.total + total
        ranks = np.concatenate([self.ranks, ranks])
        rows = rows if self.rows is None else np.concatenate([self.rows, rows])
        if len(ranks) > SAMPLE_ROWS:
            keep = np.argpartition(ranks, SAMPLE_ROWS - 1)[:SAMPLE_ROWS]
            ranks, rows = ranks[keep], rows[keep]
        self.ranks, self.rows = ranks, rows


def sample_cutoff(count: int) -> int:
    """The URI rank below which a row is a sample candidate: about 1.25 x SAMPLE_ROWS rows.

    Each bundle sends its candidates to be combined; without the cutoff every bundle
    smaller than the sample would send all its rows, and a local runner, which holds
    what a combine receives in memory, would hold every row's projection.
    """
    if count <= SAMPLE_ROWS:
        return 2**64
    return int(2**64 * min(1.0, 1.25 * SAMPLE_ROWS / count))


class SampleCandidatesFn(beam.DoFn):
    """A StoredBatch to a _Sample of its count, its sum and its rows below the cutoff."""

    def __init__(self, seed: int):
        self._seed = seed
        self._basis: np.ndarray | None = None

    def process(self, batch: StoredBatch, count: int):
        ranks = np.array([uri_rank(uri) for uri in batch.uris], dtype=np.uint64)
        matrix = np.asarray(batch.embeddings, dtype=np.float32)
        if not len(ranks):
            return
        if self._basis is None:
            self._basis = coarse_basis(matrix.shape[1], self._seed)
        chosen = ranks < np.uint64(min(sample_cutoff(count), 2**64 - 1))
        sample = _Sample()
        total = matrix.sum(axis=0, dtype=np.float64)
        sample.add(len(ranks), total, ranks[chosen], matrix[chosen] @ self._basis)
        yield sample


class SampleFn(beam.CombineFn):
    """_Samples to one: memory bounded by SAMPLE_ROWS, whatever the count."""

    def create_accumulator(self) -> _Sample:
        return _Sample()

    def add_input(self, sample: _Sample, other: _Sample) -> _Sample:
        sample.add(other.count, other.total, other.ranks, other.rows)
        return sample

    def merge_accumulators(self, samples) -> _Sample:
        merged = _Sample()
        for sample in samples:
            merged.add(sample.count, sample.total, sample.ranks, sample.rows)
        return merged

    def extract_output(self, sample: _Sample) -> _Sample:
        return sample


def plan_search(sample: _Sample, settings: SimilaritySettings) -> SearchPlan | None:
    """Cells for the stored embeddings: one (exact) up to cell_size images, else k-means."""
    if sample.count == 0:
        return None
    mean = sample.total / sample.count
    basis = coarse_basis(len(mean), settings.seed)
    cells = min(math.ceil(sample.count / settings.cell_size), MAX_CELLS)
    if cells <= 1:
        centroids = np.zeros((1, basis.shape[1]), dtype=np.float32)
    else:
        # In rank order: the order rows arrive in depends on bundles, and k-means starts
        # from rows picked by position.
        projected = sample.rows[np.argsort(sample.ranks, kind="stable")]
        rows = coarse_rows(projected, mean.astype(np.float32) @ basis)
        centroids = train_centroids(rows, cells, settings.seed)
    per_image = min(settings.cells_per_image, len(centroids))
    entries = sample.count * per_image * max(settings.neighbors, 1)
    return SearchPlan(
        count=sample.count,
        mean=mean,
        basis=basis,
        centroids=centroids,
        cells_per_image=per_image,
        buckets=max(1, math.ceil(entries / _MERGE_ENTRIES)),
    )


class AssignCellsFn(beam.DoFn):
    """A StoredBatch to (cell, (uris, unit rows, pixels)) for each cell its rows join;
    pixels (width x height) order a near-duplicate group's representatives."""

    def process(self, batch: StoredBatch, plan: SearchPlan | None):
        if plan is None or not batch.uris:
            return
        uris = np.asarray(batch.uris, dtype=object)
        sizes = np.asarray(batch.sizes, dtype=np.int64).reshape(len(uris), 2)
        pixels = sizes[:, 0] * sizes[:, 1]
        for cell, members, rows in cell_members(batch, plan):
            yield cell, (uris[members].tolist(), rows, pixels[members])


def cell_members(batch: StoredBatch, plan: SearchPlan):
    """A batch's rows, centred and unit, by cell: (cell, member indices, their rows) for
    each of the plan's cells that some of them join."""
    rows = unit_rows(batch.embeddings, plan.mean)
    if plan.exact:
        yield 0, np.arange(len(rows)), rows
        return
    coarse = coarse_rows(rows @ plan.basis)
    cells = nearest_cells(coarse, plan.centroids, plan.cells_per_image)
    for cell in np.unique(cells):
        members = np.flatnonzero((cells == cell).any(axis=1))
        yield int(cell), members, rows[members]


class SearchCellFn(beam.DoFn):
    """A cell's rows to (bucket, [neighbour candidates]) and, with a duplicate threshold,
    its pairs at or above it, tagged `pairs` ([(uri, pixels, uri, pixels, similarity)]),
    and edges that join the same images, tagged `edges` ([(uri, uri)])."""

    EDGES = "edges"
    PAIRS = "pairs"

    def __init__(self, settings: SimilaritySettings):
        self._settings = settings
        self._cells = counter("similarity_cells")
        self._cell_rows = beam.metrics.Metrics.distribution(NAMESPACE, "cell_rows")

    def process(self, cell: tuple[int, list], plan: SearchPlan):
        progress.begin("searching for neighbours")
        _, chunks = cell
        uris = [uri for chunk_uris, _, _ in chunks for uri in chunk_uris]
        rows = np.concatenate([chunk_rows for _, chunk_rows, _ in chunks])
        pixels = np.concatenate([chunk_pixels for _, _, chunk_pixels in chunks]).tolist()
        self._cells.inc()
        self._cell_rows.update(len(uris))
        candidates, pairs = search_cell(
            uris, rows, self._settings.neighbors, self._settings.duplicate_threshold
        )
        yield from by_bucket(candidates, plan.buckets)
        if pairs:
            yield beam.pvalue.TaggedOutput(
                self.PAIRS, [(uris[i], pixels[i], uris[j], pixels[j], s) for i, j, s in pairs]
            )
            edges = cell_links((uris[i], uris[j]) for i, j, _ in pairs)
            yield beam.pvalue.TaggedOutput(self.EDGES, edges)


def by_bucket(candidates: list[tuple[str, list, list]], buckets: int) -> list[tuple[int, list]]:
    """Each image's candidate list under its merge bucket (by the hash of its URI), so that
    one merge sees every list of an image."""
    bucketed: dict[int, list] = {}
    for candidate in candidates:
        bucketed.setdefault(uri_rank(candidate[0]) % buckets, []).append(candidate)
    return list(bucketed.items())


def merge_bucket(bucket: tuple[int, list], k: int):
    """A merge bucket's candidates to one neighbours row per image."""
    _, lists = bucket
    by_uri: dict[str, list] = {}
    for candidates in lists:
        for uri, names, similarities in candidates:
            by_uri.setdefault(uri, []).append((names, similarities))
    for uri in sorted(by_uri):
        names, similarities = merge_neighbours(by_uri[uri], k)
        yield {"uri": uri, "neighbors": names, "similarities": similarities}


class ListStoredFilesFn(beam.DoFn):
    """The earlier runs' record files under the output and this run's staged ones (a side
    input): with --skip_existing the search covers earlier runs' embeddings too. Only the
    runs that summary.json names count: no other file there is read. Without this_run,
    another output's record files (--compare_with)."""

    def __init__(self, patterns: list[str], runs: tuple[str, ...]):
        self._patterns = patterns
        self._runs = runs

    def process(self, unused, this_run: list[str] = ()):
        yield from of_runs(matching_files(self._patterns), self._runs)
        yield from this_run


class ListRecordFiles(beam.PTransform):
    """The record files of an output's named runs, and this run's stored files where the
    input is their PCollection (the input a PBegin: another output's files only)."""

    def __init__(self, patterns: list[str], runs: tuple[str, ...]):
        super().__init__()
        self._patterns = patterns
        self._runs = runs

    def expand(self, this_run):
        listed = {}
        if not isinstance(this_run, beam.pvalue.PBegin):
            listed["this_run"] = beam.pvalue.AsList(this_run)
        return (
            this_run.pipeline
            | "Start listing" >> beam.Create([None])
            | "List stored files"
            >> beam.ParDo(ListStoredFilesFn(self._patterns, self._runs), **listed)
        )


def _describe(
    unused,
    plan: SearchPlan | None,
    neighbor_rows: int,
    duplicates: dict | None,
    settings: SimilaritySettings,
    bands: list[dict] | None = None,
) -> dict[str, Any]:
    """What the summary says of the search: its size and method, and what it found (with
    neighbours, the pairs per similarity band)."""
    described = plan.describe() if plan else {"images": 0}
    described["neighbors"] = {"k": settings.neighbors, "images": neighbor_rows}
    if bands is not None:
        described["neighbors"]["bands"] = bands
    if duplicates is not None:
        described["duplicates"] = {"threshold": settings.duplicate_threshold, **duplicates}
        if duplicates["largest_component"]["pairs"] > COMPONENT_PAIRS_WARNING:
            described["duplicates"]["warning"] = (
                f"a component has more than {COMPONENT_PAIRS_WARNING:,} pairs, all held by "
                "one worker; a higher --duplicate_threshold splits it"
            )
    return described


class FindSimilar(OptionalOutput):
    """Stored files to neighbors-RUN-*.parquet and duplicates-RUN-*.csv in the stage.

    Reads `files`, the names of this run's stored files; the record files of the
    target's earlier_runs (with --skip_existing, the runs whose embeddings the output
    holds) are searched too.
    Gives `neighbors` (one row dict per image, when asked for) with `band_pairs` (one
    list of each similarity band's sample pairs, bands.BandPairs), `groups` (one list of
    (group number, [(uri, similarity)], component number), largest first, when asked
    for) with `duplicate_of` ((member, representative) for every member of a group but
    its representative), `description` and `files` (the names written). Spill files go to temp
    (naming.run_temp_folder), the stage when None.
    """

    name = "similarity"
    step = "Find similar images"
    file_kinds = (FileKind(NEIGHBORS, ".parquet"), FileKind(DUPLICATES, ".csv"))
    reads = ("files",)

    def __init__(self, target: RunTarget, settings: SimilaritySettings, temp: str | None = None):
        super().__init__()
        self._output = target.output
        self._stage = target.stage
        self._temp = temp or target.stage
        self._format = FORMATS[target.output_format]
        self._run_id = target.run_id
        self._earlier_runs = target.earlier_runs
        self._settings = settings

    def final_files(self) -> dict[str, str]:
        files = {}
        if self._settings.neighbors:
            files["neighbors"] = output_path(self._output, f"{NEIGHBORS}-*.parquet")
        if self._settings.duplicate_threshold:
            files["duplicates"] = output_path(self._output, f"{DUPLICATES}-*.csv")
        return files

    def expand(self, run: dict[str, beam.PCollection]):
        files = run["files"]
        settings = self._settings
        spill = spill_prefix(self._temp)
        stored = files
        if self._earlier_runs:
            stored = files | "List stored files" >> ListRecordFiles(
                self._format.record_files(self._output), self._earlier_runs
            )
        count = (
            stored
            | "Read URIs" >> self._format.read_uris()
            | "Count images" >> beam.combiners.Count.Globally()
        )
        plan = (
            stored
            | "Read for the sample" >> self._format.read_batches(self._output)
            | "Sample candidates"
            >> beam.ParDo(SampleCandidatesFn(settings.seed), beam.pvalue.AsSingleton(count))
            | "Mean and sample" >> beam.CombineGlobally(SampleFn())
            | "Learn cells" >> beam.Map(plan_search, settings)
        )
        plan_side = beam.pvalue.AsSingleton(plan)
        searched = (
            stored
            | "Read for the search" >> self._format.read_batches(self._output)
            | "Assign cells" >> beam.ParDo(AssignCellsFn(), plan=plan_side)
            | "Group cells" >> GroupThroughFiles(f"{spill}-cells")
            | "Search cells"
            >> beam.ParDo(SearchCellFn(settings), plan=plan_side).with_outputs(
                SearchCellFn.EDGES, SearchCellFn.PAIRS, main="candidates"
            )
        )
        finished = []
        neighbors = files.pipeline | "No neighbours" >> beam.Create([])
        if settings.neighbors:
            neighbors = (
                searched.candidates
                | "Group candidates" >> GroupThroughFiles(f"{spill}-merge")
                | "Merge candidates" >> beam.FlatMap(merge_bucket, settings.neighbors)
            )
            written = neighbors | "Write neighbours" >> beam.io.WriteToParquet(
                shard_prefix(self._stage, NEIGHBORS, self._run_id),
                NEIGHBORS_SCHEMA,
                codec="snappy",
                file_name_suffix=".parquet",
                shard_name_template=SHARD_TEMPLATE,
            )
            finished.append(written)
        neighbor_rows = neighbors | "Count neighbour rows" >> beam.combiners.Count.Globally()
        bands = None
        if settings.neighbors:
            bands = neighbors | "Similarity bands" >> BandPairs(settings.seed)

        groups = duplicates = duplicate_of = None
        if settings.duplicate_threshold:
            components = {
                "edges": searched[SearchCellFn.EDGES],
                "pairs": searched[SearchCellFn.PAIRS],
            } | "Components" >> GroupComponents(settings.duplicate_threshold, f"{spill}-components")
            groups = (
                components
                | "All groups" >> beam.combiners.ToList()
                | "Number groups" >> beam.Map(number_groups)
            )
            duplicates = components | "Count groups" >> beam.CombineGlobally(ComponentStatsFn())
            duplicate_of = components | "Members' representatives" >> beam.FlatMap(representatives)
            written = groups | "Write duplicates" >> beam.ParDo(
                WriteGroupsFn(self._stage, self._run_id)
            )
            finished.append(written)
        _ = (
            files.pipeline
            | "Start clean-up" >> beam.Create([None])
            | "Remove spill files"
            >> beam.ParDo(RemoveSpillFilesFn(spill), *(beam.pvalue.AsList(f) for f in finished))
        )
        description = (
            files.pipeline
            | "Start description" >> beam.Create([None])
            | "Describe"
            >> beam.Map(
                _describe,
                plan_side,
                beam.pvalue.AsSingleton(neighbor_rows),
                beam.pvalue.AsSingleton(duplicates) if duplicates is not None else None,
                settings,
                beam.pvalue.AsSingleton(bands["counts"]) if bands else None,
            )
        )
        files = tuple(finished) | "Files written" >> beam.Flatten(pipeline=files.pipeline)
        return {
            **({"neighbors": neighbors, "band_pairs": bands["samples"]} if bands else {}),
            **({"groups": groups, "duplicate_of": duplicate_of} if groups is not None else {}),
            "description": description,
            "files": files,
        }
