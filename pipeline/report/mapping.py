"""The map branch: PCA of the embeddings, 2-D coordinates, a PNG scatter and an HTML report."""

from __future__ import annotations

import functools
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from pipeline.common import (
    Failure,
    ImageKey,
    counter,
    csv_line,
    progress,
    seeded_rank,
    write_atomically,
)
from pipeline.outputs import (
    COORDINATES,
    FORMATS,
    MAP_PNG,
    REPORT_HTML,
    FileKind,
    OptionalOutput,
    RunTarget,
    StoredBatch,
    WriteRunShards,
    output_path,
)
from pipeline.report import page, plot
from pipeline.report.page import REPORTED_GROUPS, REPORTED_MATCHES
from pipeline.report.projection import PrincipalComponentsFn, Projection

# The most of the other output's report.html that --compare_with reads for thumbnails:
# about 40,000 points' thumbnails; a larger page is passed over (URIs shown instead).
OTHER_REPORT_BYTES = 256 * 1024 * 1024
THUMBNAIL_SIZE = 128  # pixels, longer side; the report shows them at this size on hover
REPORTED_FAILURES = 1000  # the report lists at most this many failures
_PROJECT_ROWS = 1024


def _rank_by_uri(seed: int, element: tuple) -> str:
    """seeded_rank of an element whose first field is its URI (a point or a thumbnail)."""
    return seeded_rank(seed, element[0])


def _failure_order(failure: Failure) -> tuple[str, str]:
    return failure.uri, failure.stage


def _embedding(keyed: tuple[ImageKey, np.ndarray]) -> np.ndarray:
    return keyed[1]


def _thumbnail(
    keyed: tuple[ImageKey, np.ndarray],
) -> tuple[str, bytes | None, tuple[str, float] | None, tuple[float, ...]]:
    """An image's URI, thumbnail, when labelled its best label and score, and its scores
    (--score_head, in the heads' order)."""
    key = keyed[0]
    found = (key.labels.label, key.labels.score) if key.labels else None
    return key.uri, key.thumbnail, found, key.scores


class ProjectFn(beam.DoFn):
    """(uris, embeddings) to one (uri, x, y) per image, with the PCA as a side input."""

    def __init__(self):
        self._projected = counter("map_points")

    def process(self, batch: StoredBatch, projection: Projection | None):
        progress.begin("drawing the map")
        uris, matrix = batch.uris, batch.embeddings
        if projection is None or not uris:
            return
        # A Parquet row group can hold thousands of embeddings: project a slice at a time
        # so that the float64 copies stay small.
        for start in range(0, len(uris), _PROJECT_ROWS):
            rows = slice(start, start + _PROJECT_ROWS)
            coordinates = projection.apply(matrix[rows])
            self._projected.inc(len(coordinates))
            for uri, (x, y) in zip(uris[rows], coordinates, strict=True):
                yield uri, float(x), float(y)


def coordinates_line(point: tuple[str, float, float]) -> str:
    return csv_line([point[0], repr(point[1]), repr(point[2])])


class ShownNeighborsFn(beam.DoFn):
    """A neighbours row of a sampled point to (uri, [(neighbour, similarity)]) in the sample."""

    def setup(self):
        self._sample = None
        self._shown: frozenset[str] = frozenset()

    def process(self, row: dict, sample: list[tuple[str, float, float]]):
        if self._sample is not sample:  # the set is built once per side-input value
            self._sample = sample
            self._shown = frozenset(uri for uri, _, _ in sample)
        if row["uri"] in self._shown:
            yield (
                row["uri"],
                [
                    (name, float(similarity))
                    for name, similarity in zip(row["neighbors"], row["similarities"], strict=True)
                    if name in self._shown
                ],
            )


def _pair_uris(samples: list) -> frozenset[str]:
    """The URIs of the similarity bands' sample pairs (at most 2 x 6 per band)."""
    return frozenset(
        uri for _, pairs in samples for pair in pairs for uri in (pair.first, pair.second)
    )


class PairThumbnailsFn(beam.DoFn):
    """(ImageKey, embedding) to (uri, thumbnail) for the images of the bands' sample pairs
    (or of the shown matches)."""

    def process(self, keyed: tuple[ImageKey, np.ndarray], wanted: frozenset[str]):
        key = keyed[0]
        if key.uri in wanted:
            yield key.uri, key.thumbnail


def _match_rank(seed: int, match: dict) -> str:
    """The shown matches are those whose rank is smallest: the same on every run and runner."""
    return seeded_rank(seed, f"{match['uri']}\n{match['match_uri']}")


def _match_uris(matches: list[dict]) -> frozenset[str]:
    """This output's URIs among the shown matches."""
    return frozenset(match["uri"] for match in matches)


def other_thumbnails(summary: dict[str, Any], matches: list[dict]) -> dict[str, bytes]:
    """The thumbnails of the shown matches' images that the other output's report.html
    shows (its seeded sample, at most its --map_sample_size); {} without one."""
    compared = summary.get("compared")
    if not compared or not matches:
        return {}
    path = output_path(compared["with"], REPORT_HTML)
    try:
        with FileSystems.open(path) as handle:
            html = handle.read(OTHER_REPORT_BYTES + 1)
    except (OSError, ValueError):  # no report there (a run without --map)
        return {}
    if len(html) > OTHER_REPORT_BYTES:  # not one this tool wrote for a sample we read
        return {}
    try:
        html = html.decode("utf-8")
    except ValueError:
        return {}
    return page.sample_thumbnails(html, {match["match_uri"] for match in matches})


def largest_groups(groups: list) -> list:
    return groups[:REPORTED_GROUPS]


class WriteMapFn(beam.DoFn):
    """Writes the PNG scatter and the HTML report, both drawing the sampled points, into
    the stage; yields their names."""

    def __init__(self, stage: str, sample_size: int, seed: int):
        self._stage = stage
        self._sample_size = sample_size
        self._seed = seed

    def process(
        self,
        unused,
        projection: Projection | None,
        points: list[tuple[str, float, float]],
        thumbnails: list[tuple[str, bytes | None, tuple[str, float] | None, tuple[float, ...]]],
        failures: list[Failure],
        summary: dict[str, Any],
        neighbors: list[tuple[str, list]],
        groups: list,
        bands: list,
        pair_thumbnails: list[tuple[str, bytes | None]],
        matches: list[dict],
    ):
        png = plot.scatter_png(points, projection)
        png_path = output_path(self._stage, MAP_PNG)
        write_atomically(png_path, png)
        html = page.render(
            points,
            {uri: thumbnail for uri, thumbnail, _, _ in thumbnails},
            projection,
            summary,
            failures,
            sample_rule=f"the {len(points)} URIs with the smallest SHA-256 of "
            f'"{self._seed}:<uri>" (--seed {self._seed}, --map_sample_size '
            f"{self._sample_size})",
            neighbors=dict(neighbors),
            groups=groups,
            labels={uri: found for uri, _, found, _ in thumbnails if found},
            scores={uri: scored for uri, _, _, scored in thumbnails if scored},
            bands=bands,
            pair_thumbnails=dict(pair_thumbnails),
            matches=matches,
            other_thumbnails=other_thumbnails(summary, matches),
        )
        report_path = output_path(self._stage, REPORT_HTML)
        write_atomically(report_path, html.encode())
        yield png_path
        yield report_path


class MapEmbeddings(OptionalOutput):
    """The map branch: map-coordinates-*.csv (every image), map.png and report.html in the
    stage (the run's folder); gives their names as `files`.

    Reads embeddings (thumbnails riding in the keys), files, failures and the summary,
    and, when the run found them, neighbors (neighbours rows), band_pairs (each
    similarity band's sample pairs), groups (one list of numbered near-duplicate
    groups) and matches (--compare_with's match rows, of which a seeded few are shown).
    """

    name = "map"
    step = "Map embeddings"
    file_kinds = (
        FileKind(COORDINATES, ".csv"),
        FileKind(MAP_PNG, sharded=False),
        FileKind(REPORT_HTML, sharded=False),
    )
    reads = (
        "embeddings",
        "files",
        "failures",
        "summary",
        "neighbors",
        "groups",
        "band_pairs",
        "matches",
    )

    def __init__(self, target: RunTarget, sample_size: int, seed: int):
        super().__init__()
        self._output = target.output
        self._stage = target.stage
        self._format = target.output_format
        self._run_id = target.run_id
        self._sample_size = sample_size
        self._seed = seed

    def final_files(self) -> dict[str, str]:
        return {
            "map_coordinates": output_path(self._output, f"{COORDINATES}-*.csv"),
            "map_png": output_path(self._output, MAP_PNG),
            "report": output_path(self._output, REPORT_HTML),
        }

    def expand(self, inputs: dict[str, beam.PCollection]):
        embeddings = inputs["embeddings"]
        projection = (
            embeddings
            | "Embeddings" >> beam.Map(_embedding)
            | "PCA" >> beam.CombineGlobally(PrincipalComponentsFn())
        )
        points = (
            inputs["files"]
            # The projection reads what was stored instead of holding the embeddings
            # between the two passes: a runner would otherwise keep every embedding
            # until PCA is done (the local runner in memory).
            | "Read stored embeddings" >> FORMATS[self._format].read_batches(self._output)
            | "Project" >> beam.ParDo(ProjectFn(), projection=beam.pvalue.AsSingleton(projection))
        )
        # Coordinates from another run's PCA are in another basis: never keep them, even
        # with --skip_existing.
        coordinates = (
            points
            | "To CSV lines" >> beam.Map(coordinates_line)
            | "Write coordinates"
            >> WriteRunShards(self._stage, COORDINATES, ".csv", self._run_id, header="uri,x,y")
        )

        sampled_points = points | "Sample points" >> beam.combiners.Top.Smallest(
            self._sample_size, key=functools.partial(_rank_by_uri, self._seed)
        )
        sampled_thumbnails = (
            embeddings
            | "Thumbnails" >> beam.Map(_thumbnail)
            | "Sample thumbnails"
            >> beam.combiners.Top.Smallest(
                self._sample_size, key=functools.partial(_rank_by_uri, self._seed)
            )
        )
        listed_failures = inputs["failures"] | "Some failures" >> beam.combiners.Top.Smallest(
            REPORTED_FAILURES, key=_failure_order
        )
        pipeline = embeddings.pipeline
        neighbors = pipeline | "No neighbours" >> beam.Create([])
        if "neighbors" in inputs:
            neighbors = inputs["neighbors"] | "Neighbours shown" >> beam.ParDo(
                ShownNeighborsFn(), beam.pvalue.AsSingleton(sampled_points)
            )
        shown_uris = []  # the URIs whose thumbnails the pairs shown need, one set each
        bands = pipeline | "No bands" >> beam.Create([[]])
        if "band_pairs" in inputs:
            bands = inputs["band_pairs"]
            shown_uris.append(bands | "Pair URIs" >> beam.Map(_pair_uris))
        matches = pipeline | "No matches" >> beam.Create([[]])
        if "matches" in inputs:
            matches = inputs["matches"] | "Shown matches" >> beam.combiners.Top.Smallest(
                REPORTED_MATCHES, key=functools.partial(_match_rank, self._seed)
            )
            shown_uris.append(matches | "Match URIs" >> beam.Map(_match_uris))
        pair_thumbnails = pipeline | "No pair thumbnails" >> beam.Create([])
        if shown_uris:
            # One pass over the embeddings for both kinds of pair.
            wanted = (
                tuple(shown_uris)
                | "Shown URIs" >> beam.Flatten(pipeline=pipeline)
                | "All shown URIs" >> beam.CombineGlobally(lambda sets: frozenset().union(*sets))
            )
            pair_thumbnails = embeddings | "Pair thumbnails" >> beam.ParDo(
                PairThumbnailsFn(), beam.pvalue.AsSingleton(wanted)
            )
        groups = pipeline | "No groups" >> beam.Create([[]])
        if "groups" in inputs:
            groups = inputs["groups"] | "Largest groups" >> beam.Map(largest_groups)
        pictures = (
            pipeline
            | "Start map" >> beam.Create([None])
            | "Write map and report"
            >> beam.ParDo(
                WriteMapFn(self._stage, self._sample_size, self._seed),
                projection=beam.pvalue.AsSingleton(projection),
                points=beam.pvalue.AsSingleton(sampled_points),
                thumbnails=beam.pvalue.AsSingleton(sampled_thumbnails),
                failures=beam.pvalue.AsSingleton(listed_failures),
                summary=beam.pvalue.AsSingleton(inputs["summary"]),
                neighbors=beam.pvalue.AsList(neighbors),
                groups=beam.pvalue.AsSingleton(groups),
                bands=beam.pvalue.AsSingleton(bands),
                pair_thumbnails=beam.pvalue.AsList(pair_thumbnails),
                matches=beam.pvalue.AsSingleton(matches),
            )
        )
        return {"files": (coordinates, pictures) | "Map files" >> beam.Flatten()}
