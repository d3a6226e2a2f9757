"""The self-contained HTML report: a zoomable map of thumbnails and the run summary."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from html import escape
from importlib import resources
from typing import Any

from pipeline.common import STAGES, Failure
from pipeline.report.plot import axis_label
from pipeline.report.projection import Projection

REPORTED_GROUPS = 12  # the report shows this many of the largest near-duplicate groups
GROUP_MEMBERS_SHOWN = 12  # and this many images of each
REPORTED_LABELS = 50  # with --zero_shot_labels, thumbnails of this many most frequent labels
LABEL_THUMBNAILS_SHOWN = 6  # and this many of each, best scores first
COLOURED_LABELS = 10  # the map colours this many most frequent labels, the rest grey
SCORE_THUMBNAILS_SHOWN = 6  # with --score_head, the lowest and the highest scored shown
SAMPLE_PAIRS_SHOWN = 6  # with --neighbors, sample pairs per similarity band
REPORTED_MATCHES = 24  # with --compare_with, matched pairs shown
# Thumbnails within this fraction of the points' span on both axes are a stack: under
# a pixel apart even at the page's largest zoom (500x) on a map up to 2,000 pixels wide,
# so no zoom can pull them apart and the page counts them on a badge instead.
STACK_TOLERANCE = 1e-6


def _template() -> str:
    return resources.files("pipeline.report").joinpath("report.html").read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    # Inside <script>, only "</" could end the element early; \u003c cannot.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = []
    for name, value in rows:
        css = ' class="number"' if isinstance(value, int | float) else ""
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        cells.append(f"<tr><th>{escape(name)}</th><td{css}>{escape(str(shown))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _section(title: str, rows: Sequence[tuple[str, Any]], after: str = "") -> str:
    return f"<div><h2>{escape(title)}</h2>{_table(rows)}{after}</div>"


def _counts(summary: Mapping[str, Any]) -> str:
    rows = [
        ("Rows read", summary["rows_read"]),
        ("Embedded", summary["embedded"]),
        ("Failed", summary["failed"]),
        *((f"Failed at {stage}", summary["failed_by_stage"][stage]) for stage in STAGES),
        ("Duplicates dropped", summary["duplicates_dropped"]),
        ("Skipped (already embedded)", summary["skipped_existing"]),
    ]
    verdict = (
        '<p class="ok">Every row is accounted for.</p>'
        if summary["reconciled"]
        else '<p class="bad">Counts do not reconcile: some rows are unaccounted for.</p>'
    )
    return _section("Counts", rows, verdict)


def _run(summary: Mapping[str, Any]) -> str:
    rows = [
        ("Model", summary["model"]),
        ("Weights", summary["weights"]),
        ("Pooling", summary["pooling"]),
        ("Resize", summary["resize"]),
        ("Embedding shape", " x ".join(str(n) for n in summary["embedding_shape"])),
        ("Throughput", f"{summary['images_per_second']} images/s"),
        ("Elapsed", f"{summary['elapsed_seconds']} s"),
        ("Started", summary["started_at"]),
        ("Input", summary["input"]),
        ("Output", summary["output"]),
    ]
    return _section("Run", rows)


def _map(projection: Projection | None, shown: int, sample_rule: str) -> str:
    total = projection.count if projection else 0
    rows = [("Images on the map", total), ("Thumbnails shown", shown)]
    if projection is not None:
        rows += [("Horizontal axis", axis_label(projection, 0))]
        rows += [("Vertical axis", axis_label(projection, 1))]
    note = (
        f'<p class="muted">Shown: {escape(sample_rule)}. Every image\'s coordinates are in '
        "map-coordinates-*.csv.</p>"
        if shown < total
        else ""
    )
    return _section("Map", rows, note)


def _similarity(summary: Mapping[str, Any]) -> str:
    found = summary.get("similarity")
    if not found:
        return ""
    rows = [("Images searched", found["images"])]
    if found["images"]:
        rows.append(
            (
                "Search",
                f"{found['method']}: {found['cells']:,} cells, {found['cells_per_image']} "
                "per image",
            )
        )
    if found["neighbors"]["k"]:
        rows.append(("Neighbours per image", found["neighbors"]["k"]))
    duplicates = found.get("duplicates")
    if duplicates:
        rows += [
            ("Duplicate threshold", duplicates["threshold"]),
            ("Near-duplicate groups", duplicates["groups"]),
            ("Images in groups", duplicates["images"]),
            ("Components", duplicates["components"]),
            (
                "Largest component",
                f"{duplicates['largest_component']['images']:,} images, "
                f"{duplicates['largest_component']['pairs']:,} pairs",
            ),
        ]
        if "warning" in duplicates:
            rows.append(("Warning", duplicates["warning"]))
    return _section("Similarity", rows)


def _keep(summary: Mapping[str, Any]) -> str:
    """What to keep (docs/similarity.md#what-to-keep-keep-and-drop_reason), when decided."""
    decided = summary.get("keep")
    if not decided:
        return ""
    rows = [
        ("Kept", decided["kept"]),
        ("Dropped as near-duplicates", decided["dropped_by_reason"]["duplicate_of"]),
        ("Dropped as matches in the other output", decided["dropped_by_reason"]["matches"]),
    ]
    return _section(
        "What to keep",
        rows,
        '<p class="muted">Every row\'s keep and drop_reason are in the embeddings.</p>',
    )


def _span(values: Sequence[float]) -> float:
    """max - min, or 1 when every value is the same, as the page fits its axes."""
    return (max(values) - min(values)) or 1.0


def _joined_positions(
    positions: Sequence[tuple[float, float]], steps: tuple[float, float]
) -> list[int]:
    """Union-find over distinct positions: each one's root, joining those within steps.

    A grid of cells one step wide, from the lowest position, finds the candidates; pairs
    in neighbouring cells are compared, so two positions either side of a border join.
    """
    low = (min(x for x, _ in positions), min(y for _, y in positions))
    parent = list(range(len(positions)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    cells: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(positions):
        cell = (math.floor((x - low[0]) / steps[0]), math.floor((y - low[1]) / steps[1]))
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cells.get((cell[0] + dx, cell[1] + dy), ()):
                    other = positions[j]
                    if abs(x - other[0]) <= steps[0] and abs(y - other[1]) <= steps[1]:
                        parent[root(i)] = root(j)
        cells.setdefault(cell, []).append(i)
    return [root(i) for i in range(len(positions))]


def stacks(
    points: Sequence[tuple[str, float, float]], tolerance: float = STACK_TOLERANCE
) -> list[list[int]]:
    """The points drawn on one another: lists of two or more indices, each list and the
    lists in index order. Two points stack when both coordinates are within tolerance
    times the points' span on that axis; stacks chain."""
    at: dict[tuple[float, float], list[int]] = {}
    for i, (_, x, y) in enumerate(points):
        at.setdefault((x, y), []).append(i)
    positions = list(at)
    if not positions:
        return []
    steps = (
        _span([x for x, _ in positions]) * tolerance,
        _span([y for _, y in positions]) * tolerance,
    )
    joined: dict[int, list[int]] = {}
    for position, group in zip(positions, _joined_positions(positions, steps), strict=True):
        joined.setdefault(group, []).extend(at[position])
    return sorted(sorted(members) for members in joined.values() if len(members) > 1)


def _thumbnail_figure(uri: str, value: float, thumbnail: bytes | None) -> str:
    """A thumbnail with its value (a similarity or a score) and its file name."""
    picture = (
        f'<img src="data:image/jpeg;base64,{base64.b64encode(thumbnail).decode("ascii")}" '
        f'alt="{escape(uri)}">'
        if thumbnail
        else '<div class="no-thumbnail">no thumbnail</div>'
    )
    return (
        f'<figure title="{escape(uri)}">{picture}'
        f'<figcaption><span class="similarity">{value:.4f}</span><br>'
        f"{escape(uri.rsplit('/', 1)[-1])}</figcaption></figure>"
    )


def _groups(
    summary: Mapping[str, Any],
    groups: Sequence[tuple[int, Sequence[tuple[str, float]], int]],
    thumbnails: Mapping[str, bytes | None],
) -> str:
    duplicates = summary.get("similarity", {}).get("duplicates")
    if duplicates is None:
        return ""
    if not groups:
        return "<h2>Near-duplicate groups</h2><p>None.</p>"
    shown = "".join(
        f'<div class="group"><h3>Group {number} ({len(members):,} images, '
        f"component {component})</h3>"
        + "".join(
            _thumbnail_figure(uri, similarity, thumbnails.get(uri))
            for uri, similarity in members[:GROUP_MEMBERS_SHOWN]
        )
        + "</div>"
        for number, members, component in groups
    )
    return (
        f'<h2 id="duplicates">Near-duplicate groups ({duplicates["groups"]:,})</h2>'
        f'<p class="muted">The {len(groups):,} largest, at most {GROUP_MEMBERS_SHOWN} images '
        "each; the representative (the largest image, ties to the smallest URI) comes first, "
        "the others with their similarity to it, every one at or above the threshold. A "
        "component is the wider cluster that chains of similar pairs join; it takes the "
        "smallest number of its groups. Thumbnails are those of the map's sample. "
        "Every group is in "
        f"{escape(summary['outputs']['duplicates'])}</p>{shown}"
    )


def _labels(
    summary: Mapping[str, Any],
    labels: Mapping[str, tuple[str, float]],
    thumbnails: Mapping[str, bytes | None],
) -> str:
    """The images per label, and a few thumbnails of each among the map's sample."""
    described = summary.get("labels")
    if not described:
        return ""
    counts = described["label_counts"]
    rows = "".join(
        f'<tr><td>{escape(label)}</td><td class="number">{count:,}</td></tr>'
        for label, count in counts.items()
    )
    shown: dict[str, list[tuple[str, float]]] = {}
    for uri, (label, score) in labels.items():
        shown.setdefault(label, []).append((uri, score))
    rows_shown = []
    for label in list(counts)[:REPORTED_LABELS]:
        best = sorted(shown.get(label, []), key=lambda item: (-item[1], item[0]))
        figures = "".join(
            _thumbnail_figure(uri, score, thumbnails.get(uri))
            for uri, score in best[:LABEL_THUMBNAILS_SHOWN]
        )
        figures = figures or '<p class="muted">None in the sample.</p>'
        rows_shown.append(
            f'<div class="label-row" data-label="{escape(label)}"><h3>{escape(label)} '
            f"({counts[label]:,} images)</h3>{figures}</div>"
        )
    return (
        f'<h2 id="labels">Labels ({described["count"]:,}, from {escape(described["source"])})</h2>'
        f'<p class="muted">Each image\'s best label (template {escape(described["template"])}); '
        "labels no image got are left out. Thumbnails: the map's sample, best scores first, "
        f"for the {REPORTED_LABELS} most frequent labels.</p>"
        f'<table class="label-counts"><tr><th>Label</th><th>Images</th></tr>{rows}</table>'
        + "".join(rows_shown)
    )


def _bands(
    summary: Mapping[str, Any],
    bands: Sequence[tuple[str, Sequence[Any]]],
    thumbnails: Mapping[str, bytes | None],
) -> str:
    """The neighbour pairs per similarity band, and each band's sample pairs side by side."""
    counted = summary.get("similarity", {}).get("neighbors", {}).get("bands")
    if counted is None:
        return ""
    rows = "".join(
        f'<tr><td>{escape(row["band"])}</td><td class="number">{row["pairs"]:,}</td></tr>'
        for row in counted
    )
    sampled = dict(bands)
    shown = "".join(
        f'<div class="band" data-band="{escape(row["band"])}"><h3>{escape(row["band"])} '
        f"({row['pairs']:,} pairs)</h3>"
        + "".join(
            '<div class="band-pair">'
            + _thumbnail_figure(pair.first, pair.similarity, thumbnails.get(pair.first))
            + _thumbnail_figure(pair.second, pair.similarity, thumbnails.get(pair.second))
            + "</div>"
            for pair in sampled.get(row["band"], ())
        )
        + "</div>"
        for row in counted
        if sampled.get(row["band"])
    )
    return (
        '<h2 id="bands">Neighbour pairs by similarity</h2>'
        '<p class="muted">Each pair of images that one lists the other among its nearest '
        "neighbours, once, by the similarity --duplicate_threshold compares: pick the "
        f"threshold by looking at the pairs. Up to {SAMPLE_PAIRS_SHOWN} pairs per band, "
        "chosen by a seeded hash of their URIs (--seed), most similar first.</p>"
        f'<table class="band-counts"><tr><th>Similarity</th><th>Pairs</th></tr>{rows}</table>'
        f"{shown}"
    )


def sample_thumbnails(html: str, wanted: Collection[str]) -> dict[str, bytes]:
    """The thumbnails that a report render wrote shows of the wanted URIs (another
    output's, for --compare_with): read from its map data as JSON and base64, nothing
    else; {} for a page without them."""
    found = re.search(r'<script type="application/json" id="map-data">(.*?)</script>', html, re.S)
    try:
        points = json.loads(found[1])["points"] if found else []
    except (ValueError, KeyError, TypeError):
        return {}
    thumbnails = {}
    for point in points if isinstance(points, list) else []:
        if not isinstance(point, dict) or point.get("uri") not in wanted:
            continue
        try:
            thumbnails[point["uri"]] = base64.b64decode(point.get("thumbnail") or "", validate=True)
        except (ValueError, TypeError):
            continue
    return {uri: thumbnail for uri, thumbnail in thumbnails.items() if thumbnail}


def _matches(
    summary: Mapping[str, Any],
    matches: Sequence[Mapping[str, Any]],
    thumbnails: Mapping[str, bytes | None],
    other_thumbnails: Mapping[str, bytes],
) -> str:
    """Matched pairs in --compare_with: this run's thumbnail beside the other image's (or
    its URI, where the other output's report sample does not hold it)."""
    compared = summary.get("compared")
    if compared is None:
        return ""

    def other(match: Mapping[str, Any]) -> str:
        uri = match["match_uri"]
        if other_thumbnails.get(uri):
            return _thumbnail_figure(uri, match["similarity"], other_thumbnails[uri])
        return (
            f'<figure class="match-uri" title="{escape(uri)}">'
            f'<div class="no-thumbnail">in {escape(compared["with"])}</div>'
            f"<figcaption>{escape(uri)}</figcaption></figure>"
        )

    shown = "".join(
        '<div class="band-pair match">'
        + _thumbnail_figure(match["uri"], match["similarity"], thumbnails.get(match["uri"]))
        + other(match)
        + "</div>"
        for match in sorted(matches, key=lambda m: (-m["similarity"], m["uri"], m["match_uri"]))
    )
    return (
        f'<h2 id="matches">Matches in {escape(compared["with"])}</h2>'
        f'<p class="muted">{compared["images_matched"]:,} of {compared["images"]:,} images have '
        f"a match at or above {compared['threshold']} ({compared['matches']:,} match rows, in "
        f"{escape(summary['outputs']['matches'])}). Up to {REPORTED_MATCHES} pairs, chosen by "
        "a seeded hash of their URIs (--seed), most similar first: this output's thumbnail "
        "(where this run embedded it) and the other image's, where the other output's "
        "report.html shows it (else its URI).</p>" + (shown or "<p>None.</p>")
    )


def _scores(
    summary: Mapping[str, Any],
    scores: Mapping[str, Sequence[float]],
    thumbnails: Mapping[str, bytes | None],
) -> str:
    """Each score's count, mean and spread, and the lowest and highest scored thumbnails
    among the map's sample."""
    described = summary.get("scores")
    if not described:
        return ""
    shown = []
    for position, (name, stats) in enumerate(described.items()):
        scored = [(values[position], uri) for uri, values in scores.items()]
        lowest = sorted(scored)[:SCORE_THUMBNAILS_SHOWN]
        highest = sorted(scored, key=lambda item: (-item[0], item[1]))[:SCORE_THUMBNAILS_SHOWN]
        deciles = stats["deciles"]
        rows = [("Images", stats["count"])]
        if stats["count"]:
            rows += [("Mean", round(stats["mean"], 4)), ("Minimum", round(deciles[0], 4))]
            rows += [("Median", round(deciles[5], 4)), ("Maximum", round(deciles[-1], 4))]
        ends = "".join(
            f'<div class="{end}"><h4>{end.capitalize()}</h4>'
            + "".join(_thumbnail_figure(uri, value, thumbnails.get(uri)) for value, uri in picked)
            + "</div>"
            for end, picked in (("lowest", lowest), ("highest", highest))
        )
        shown.append(
            f'<div class="score-row" data-score="{escape(name)}"><h3>{escape(name)}</h3>'
            f"{_table(rows)}{ends}</div>"
        )
    return (
        f'<h2 id="scores">Scores ({len(described)})</h2>'
        '<p class="muted">Each image\'s score from each --score_head, over every stored image; '
        f"thumbnails: the {SCORE_THUMBNAILS_SHOWN} lowest and highest scored of the map's "
        "sample. Colour the map by a score with the switch under it.</p>" + "".join(shown)
    )


def _failures(summary: Mapping[str, Any], failures: Sequence[Failure]) -> str:
    total = summary["failed"]
    if total == 0:
        return "<h2>Failures</h2><p>None.</p>"
    listed = f"the first {len(failures):,} by URI" if len(failures) < total else f"all {total:,}"
    rows = "".join(
        "<tr>"
        f"<td>{escape(failure.uri)}</td><td>{escape(failure.stage)}</td>"
        f"<td>{escape(failure.error_type)}</td><td>{escape(failure.message)}</td>"
        "</tr>"
        for failure in failures
    )
    return (
        f"<h2>Failures ({total:,})</h2>"
        f'<p class="muted">Listed: {listed}. The dead letter has every one: '
        f"{escape(summary['outputs']['failures'])}</p>"
        '<table class="failures"><tr><th>URI</th><th>Stage</th><th>Error</th><th>Message</th></tr>'
        f"{rows}</table>"
    )


def render(
    points: Sequence[tuple[str, float, float]],
    thumbnails: Mapping[str, bytes | None],
    projection: Projection | None,
    summary: Mapping[str, Any],
    failures: Sequence[Failure],
    sample_rule: str,
    neighbors: Mapping[str, Sequence[tuple[str, float]]] | None = None,
    groups: Sequence[tuple[int, Sequence[tuple[str, float]], int]] = (),
    labels: Mapping[str, tuple[str, float]] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    bands: Sequence[tuple[str, Sequence[Any]]] = (),
    pair_thumbnails: Mapping[str, bytes | None] | None = None,
    matches: Sequence[Mapping[str, Any]] = (),
    other_thumbnails: Mapping[str, bytes] | None = None,
) -> str:
    """The report as one HTML document that needs nothing else to open.

    neighbors: each shown point's nearest neighbours among the shown points, most similar
    first; groups: the largest near-duplicate groups, drawn with the sample's thumbnails;
    labels: each shown point's best label and score (--zero_shot_labels); scores: each
    shown point's scores, in the order of the summary's `scores` (--score_head); bands:
    each similarity band's sample pairs (similarity.bands.Pair), drawn with
    pair_thumbnails; matches: the shown match rows of --compare_with (thumbnails of this
    output's side in pair_thumbnails, of the other's in other_thumbnails).
    """
    labels = labels or {}
    scores = scores or {}
    index = {uri: i for i, (uri, _, _) in enumerate(points)}
    neighbors = neighbors or {}
    map_data = {
        "neighbors": bool(summary.get("similarity", {}).get("neighbors", {}).get("k")),
        "axes": [axis_label(projection, 0), axis_label(projection, 1)],
        "labels": list(summary.get("labels", {}).get("label_counts", {}))[:COLOURED_LABELS],
        "scores": list(summary.get("scores", {})),
        "stacks": stacks(points),
        "points": [
            {
                "uri": uri,
                "x": x,
                "y": y,
                "thumbnail": (
                    base64.b64encode(thumbnails[uri]).decode("ascii")
                    if thumbnails.get(uri)
                    else None
                ),
                "label": labels[uri][0] if uri in labels else None,
                "label_score": labels[uri][1] if uri in labels else None,
                "scores": [round(value, 6) for value in scores[uri]] if uri in scores else None,
                "neighbors": [
                    [index[name], round(similarity, 4)]
                    for name, similarity in neighbors.get(uri, ())
                    if name in index and thumbnails.get(name)
                ],
            }
            for uri, x, y in points
        ],
    }
    shown = {**thumbnails, **(pair_thumbnails or {})}  # the pairs' images, sampled or not
    total = projection.count if projection else 0
    headline = (
        f"{summary['embedded']:,} embedded, {summary['failed']:,} failed of "
        f"{summary['rows_read']:,} rows; {total:,} images on the map"
        + (f", {len(points):,} thumbnails shown" if len(points) < total else "")
        + f". {summary['model']} ({summary['weights']}), run finished {summary['finished_at']}."
    )
    sections = (
        '<div class="columns">'
        + _counts(summary)
        + _run(summary)
        + _map(projection, len(points), sample_rule)
        + _similarity(summary)
        + _keep(summary)
        + "</div>"
        + _labels(summary, labels, thumbnails)
        + _scores(summary, scores, thumbnails)
        + _bands(summary, bands, shown)
        + _matches(summary, matches, shown, other_thumbnails or {})
        + _groups(summary, groups, thumbnails)
        + _failures(summary, failures)
    )
    replacements = {
        "{{TITLE}}": escape(f"Image embeddings: {summary['output']}"),
        "{{HEADLINE}}": escape(headline),
        "{{SUMMARY}}": sections,
        "{{MAP_DATA}}": _script_json(map_data),
    }
    # One pass, so that a marker inside a URI or message is never replaced.
    return re.sub(r"\{\{[A-Z_]+\}\}", lambda found: replacements[found[0]], _template())
