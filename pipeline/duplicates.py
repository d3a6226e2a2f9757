"""Near-duplicate groups: connected components of similar pairs, each with a representative.

The representative is the group's largest image (width x height), ties going to the
smallest URI; every member's similarity is to it. Groups are numbered from 1, largest
first, ties in the representative's URI order.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np

from pipeline.atomic import write_atomically
from pipeline.csvlines import csv_line
from pipeline.formats import StoredBatch
from pipeline.naming import DUPLICATES, shard_prefix
from pipeline.neighbors import Forest, unit_rows

Group = tuple[int, list[tuple[str, float]]]  # number, [(uri, similarity)], representative first


class ComponentsFn(beam.CombineFn):
    """Lists of (uri, uri) edges to the components of two or more URIs, each sorted."""

    def create_accumulator(self) -> Forest:
        return Forest()

    def add_input(self, forest: Forest, edges: list[tuple[str, str]]) -> Forest:
        for a, b in edges:
            forest.union(a, b)
        return forest

    def merge_accumulators(self, forests) -> Forest:
        merged = Forest()
        for forest in forests:
            for item, root in forest.links():
                merged.union(item, root)
        return merged

    def extract_output(self, forest: Forest) -> list[list[str]]:
        return sorted(sorted(members) for members in forest.components())


class GroupMembersFn(beam.DoFn):
    """A StoredBatch to (component, (uri, pixels, unit row)) for its grouped images."""

    def setup(self):
        self._components = None
        self._membership: dict[str, int] = {}

    def process(self, batch: StoredBatch, components: list[list[str]], plan):
        if self._components is not components:  # built once per side-input value
            self._components = components
            self._membership = {
                uri: number for number, members in enumerate(components) for uri in members
            }
        grouped = [i for i, uri in enumerate(batch.uris) if uri in self._membership]
        if not grouped:
            return
        rows = unit_rows(batch.embeddings[grouped], plan.mean)
        for index, row in zip(grouped, rows, strict=True):
            uri = batch.uris[index]
            width, height = (int(value) for value in batch.sizes[index])
            yield self._membership[uri], (uri, width * height, row)


def group_rows(component: tuple[int, list]) -> tuple[str, list[tuple[str, float]]]:
    """A component's members to (representative, [(uri, similarity to it)])."""
    _, members = component
    uri, _, row = min(members, key=lambda member: (-member[1], member[0]))
    others = sorted(
        (
            (other, min(float(np.dot(other_row, row)), 1.0))
            for other, _, other_row in members
            if other != uri
        ),
        key=lambda item: (-item[1], item[0]),
    )
    return uri, [(uri, 1.0), *others]


def number_groups(groups: list[tuple[str, list[tuple[str, float]]]]) -> list[Group]:
    ordered = sorted(groups, key=lambda group: (-len(group[1]), group[0]))
    return [(number, members) for number, (_, members) in enumerate(ordered, start=1)]


def group_lines(groups: list[Group]):
    """CSV lines group,uri,similarity: one per image in a group."""
    for number, members in groups:
        for uri, similarity in members:
            yield csv_line([number, uri, f"{similarity:.6f}"])


class WriteGroupsFn(beam.DoFn):
    """The numbered groups (one list) to duplicates-RUN-00000-of-00001.csv; yields its path.

    Written whole from the one list rather than through a sharded sink: a sink's shuffle
    would not keep each group's rows together and its representative first.
    """

    def __init__(self, output: str, run_id: str):
        self._path = f"{shard_prefix(output, DUPLICATES, run_id)}-00000-of-00001.csv"

    def process(self, groups: list[Group]):
        text = "".join(line + "\n" for line in ("group,uri,similarity", *group_lines(groups)))
        write_atomically(self._path, text.encode("utf-8"))
        yield self._path


def only_if_grouped(element, components: list):
    """element when there is at least one group: the third read happens only then."""
    if components:
        yield element
