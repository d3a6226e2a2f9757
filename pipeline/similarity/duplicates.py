"""Near-duplicate groups: a representative and the images within the threshold of it.

The pairs at similarity >= T join images into connected components. Inside a component
the images are walked in representative order (largest width x height first, ties to the
smaller URI): an image not yet in a group becomes a representative, and every image not
yet in a group whose similarity to it is >= T joins its group. So every member is within
T of its representative, however long the chains of pairs in its component; a
representative left alone (its similar images taken by earlier ones) is in no group.

Components are found without gathering them in one place: alternating large-star and
small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond", 2014),
each one GroupByKey of edges, turn every component into a star around its smallest URI;
a check fails the run if STAR_ROUNDS were not enough. Each component's pairs then go to
one worker, which walks it. Groups are numbered from 1, largest first, ties in the
representative's URI order; a component takes the smallest number of its groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import apache_beam as beam

from pipeline.common import csv_line, write_atomically
from pipeline.outputs import DUPLICATES, shard_prefix
from pipeline.similarity.neighbors import SIMILARITY_TOLERANCE, Forest
from pipeline.similarity.spill import GroupThroughFiles

# Rounds of large-star then small-star. Each about halves a component's longest path: a
# chain of n images needs about log2(n) + 1 (measured: 100,000 in URI order, 17), so 24
# cover chains of 2^22 images. A run whose components are not stars after these fails
# rather than writing wrong groups.
STAR_ROUNDS = 24
# A component with more pairs than this warns: its walk holds every pair in one worker.
# Measured (tracemalloc, a dense component of 2,000 images, 2.0 million pairs): 0.11 KB a
# decoded pair, 0.23 KB more at the walk's peak; a pair found in several cells is
# decoded once per cell. So about 0.35 to 0.6 KB a pair, 0.7 to 1.2 GB at this bound.
COMPONENT_PAIRS_WARNING = 2_000_000

Pair = tuple[str, int, str, int, float]  # uri a, a's pixels, uri b, b's pixels, similarity
Members = list[tuple[str, float]]  # (uri, similarity to the representative), it first
Group = tuple[int, Members, int]  # number, members, component number


class NotConvergedError(RuntimeError):
    """The star rounds ended before every component was a star."""


def cell_links(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A cell's pairs to fewer edges joining the same components: a spanning forest."""
    forest = Forest()
    for a, b in pairs:
        forest.union(a, b)
    return forest.links()


def both_ways(edge: tuple[str, str]):
    a, b = edge
    yield a, b
    yield b, a


def large_star(node: tuple[str, Iterable[str]]):
    """Every larger neighbour links to the smallest of the node and its neighbours."""
    uri, neighbours = node
    neighbours = set(neighbours)
    smallest = min(neighbours | {uri})
    for other in neighbours:
        if other > uri:
            yield other, smallest


def small_star(node: tuple[str, Iterable[str]]):
    """The node and its smaller neighbours link to the smallest of them."""
    uri, neighbours = node
    smaller = {other for other in neighbours if other < uri}
    if not smaller:
        return
    smallest = min(smaller)
    for other in smaller:
        if other != smallest:
            yield other, smallest
    yield uri, smallest


def not_a_star(node: tuple[str, Iterable[str]]) -> int:
    """1 unless the node is a centre (every neighbour larger) or a leaf of one smaller."""
    uri, neighbours = node
    neighbours = set(neighbours)
    if all(other > uri for other in neighbours):
        return 0
    return 0 if len(neighbours) == 1 else 1


class _StarRound(beam.PTransform):
    """Adjacency ((node, neighbour) both ways) to the adjacency after one star step."""

    def __init__(self, step):
        super().__init__()
        self._step = step

    def expand(self, adjacency):
        step = self._step

        def relinked(node):
            for edge in step(node):
                yield from both_ways(edge)

        return adjacency | "By node" >> beam.GroupByKey() | "Relink" >> beam.FlatMap(relinked)


def check_stars(violations: int, rounds: int) -> bool:
    if violations:
        raise NotConvergedError(
            f"the near-duplicate components were not found in {rounds} rounds "
            f"({violations:,} images still in a chain); raise --duplicate_threshold"
        )
    return True


class FindComponents(beam.PTransform):
    """(uri, uri) edges to (uri, component label) for every image in a component but
    its label, the component's smallest URI (which is its own label)."""

    def __init__(self, rounds: int = STAR_ROUNDS):
        super().__init__()
        self._rounds = rounds

    def expand(self, edges):
        # Each edge travels both ways, so that a round is one GroupByKey and one step.
        adjacency = edges | "Both ways" >> beam.FlatMap(both_ways)
        for number in range(self._rounds):
            adjacency = (
                adjacency
                | f"Large star {number}" >> _StarRound(large_star)
                | f"Small star {number}" >> _StarRound(small_star)
            )
        converged = (
            adjacency
            | "Check: by node" >> beam.GroupByKey()
            | "Check: stars" >> beam.Map(not_a_star)
            | "Check: count" >> beam.CombineGlobally(sum)
            | "Check: converged" >> beam.Map(check_stars, self._rounds)
        )
        # A star's edges lead from each leaf to its smaller centre.
        return adjacency | "Labels" >> beam.FlatMap(
            lambda edge, ok: [edge] if edge[0] > edge[1] else [],
            beam.pvalue.AsSingleton(converged),
        )


def label_pairs(keyed: tuple[str, dict]):
    """(uri, {labels, pairs}) to (component label, pair) for the pairs keyed by the uri."""
    uri, joined = keyed
    labels = list(joined["labels"])
    label = labels[0] if labels else uri  # a component's smallest URI has no label row
    for pair in joined["pairs"]:
        yield label, pair


def walk(pairs: Iterable[Pair], threshold: float) -> list[Members]:
    """One component's pairs to its groups, each representative first.

    Pairs found in several cells count once, at their largest similarity (the same dot
    product, computed in blocks that may differ in the last bits).
    """
    pixels: dict[str, int] = {}
    similar: dict[tuple[str, str], float] = {}
    for a, pixels_a, b, pixels_b, similarity in pairs:
        pixels[a], pixels[b] = pixels_a, pixels_b
        key = (a, b) if a < b else (b, a)
        similar[key] = max(similar.get(key, -1.0), similarity)
    adjacent: dict[str, list[tuple[str, float]]] = {uri: [] for uri in pixels}
    for (a, b), similarity in similar.items():
        if similarity >= threshold - SIMILARITY_TOLERANCE:
            adjacent[a].append((b, similarity))
            adjacent[b].append((a, similarity))
    grouped: set[str] = set()
    groups = []
    for uri in sorted(pixels, key=lambda uri: (-pixels[uri], uri)):
        if uri in grouped:
            continue
        joined = sorted(
            (
                (other, min(similarity, 1.0))
                for other, similarity in adjacent[uri]
                if other not in grouped
            ),
            key=lambda member: (-member[1], member[0]),
        )
        if joined:
            grouped.add(uri)
            grouped.update(other for other, _ in joined)
            groups.append([(uri, 1.0), *joined])
    return groups


class WalkComponentFn(beam.DoFn):
    """(label, [pairs]) to (label, images, pairs, [groups]) for one component."""

    def __init__(self, threshold: float):
        self._threshold = threshold

    def process(self, component: tuple[str, list[Pair]]):
        label, pairs = component
        groups = walk(pairs, self._threshold)
        images = len({uri for pair in pairs for uri in (pair[0], pair[2])})
        distinct = len({(a, b) if a < b else (b, a) for a, _, b, _, _ in pairs})
        if distinct > COMPONENT_PAIRS_WARNING:
            logging.warning(
                "A near-duplicate component of %d images has %d pairs at similarity >= %s; "
                "one worker holds them all. A higher --duplicate_threshold splits it.",
                images,
                distinct,
                self._threshold,
            )
        yield label, images, distinct, groups


class GroupComponents(beam.PTransform):
    """Pairs (lists of Pair per cell) and component edges ((uri, uri) lists per cell) to
    one (label, images, pairs, [groups]) per component. Spill files go to PREFIX-*."""

    def __init__(self, threshold: float, prefix: str, rounds: int = STAR_ROUNDS):
        super().__init__()
        self._threshold = threshold
        self._prefix = prefix
        self._rounds = rounds

    def expand(self, inputs):
        labels = (
            inputs["edges"]
            | "Edges" >> beam.FlatMap(lambda edges: edges)
            | "Find components" >> FindComponents(self._rounds)
        )
        keyed_pairs = inputs["pairs"] | "Pairs by image" >> beam.FlatMap(
            lambda pairs: ((pair[0], pair) for pair in pairs)
        )
        return (
            {"labels": labels, "pairs": keyed_pairs}
            | "Join labels" >> beam.CoGroupByKey()
            | "Label pairs" >> beam.FlatMap(label_pairs)
            | "By component" >> GroupThroughFiles(self._prefix)
            | "Walk components" >> beam.ParDo(WalkComponentFn(self._threshold))
        )


def representatives(component: tuple[str, int, int, list[Members]]):
    """(member, its representative) for every image in the component's groups but their
    representatives."""
    for members in component[3]:
        representative = members[0][0]
        for uri, _ in members[1:]:
            yield uri, representative


def number_groups(components: list[tuple[str, int, int, list[Members]]]) -> list[Group]:
    """Every component's groups, numbered from 1 largest first, ties in the
    representative's URI order; a component's number is the smallest of its groups'."""
    found = [(members, label) for label, _, _, groups in components for members in groups]
    found.sort(key=lambda group: (-len(group[0]), group[0][0][0]))
    component_number: dict[str, int] = {}
    for number, (_, label) in enumerate(found, start=1):
        component_number.setdefault(label, number)
    return [
        (number, members, component_number[label])
        for number, (members, label) in enumerate(found, start=1)
    ]


class ComponentStatsFn(beam.CombineFn):
    """Components to {components, groups, images, largest_component}: constant memory."""

    def create_accumulator(self):
        return 0, 0, 0, (0, 0)

    def add_input(self, totals, component):
        _, images, pairs, groups = component
        count, group_count, grouped, largest = totals
        return (
            count + 1,
            group_count + len(groups),
            grouped + sum(len(members) for members in groups),
            max(largest, (images, pairs)),
        )

    def merge_accumulators(self, accumulators):
        count, group_count, grouped, largest = 0, 0, 0, (0, 0)
        for c, g, i, big in accumulators:
            count, group_count, grouped = count + c, group_count + g, grouped + i
            largest = max(largest, big)
        return count, group_count, grouped, largest

    def extract_output(self, totals):
        count, group_count, grouped, (images, pairs) = totals
        return {
            "groups": group_count,
            "images": grouped,
            "components": count,
            "largest_component": {"images": images, "pairs": pairs},
        }


def group_lines(groups: list[Group]):
    """CSV lines group,uri,similarity,component: one per image in a group."""
    for number, members, component in groups:
        for uri, similarity in members:
            yield csv_line([number, uri, f"{similarity:.6f}", component])


class WriteGroupsFn(beam.DoFn):
    """The numbered groups (one list) to duplicates-RUN-00000-of-00001.csv; yields its path.

    Written whole from the one list rather than through a sharded sink: a sink's shuffle
    would not keep each group's rows together and its representative first.
    """

    def __init__(self, output: str, run_id: str):
        self._path = f"{shard_prefix(output, DUPLICATES, run_id)}-00000-of-00001.csv"

    def process(self, groups: list[Group]):
        header = "group,uri,similarity,component"
        text = "".join(line + "\n" for line in (header, *group_lines(groups)))
        write_atomically(self._path, text.encode("utf-8"))
        yield self._path
