"""Connected components by star rounds, against union-find, and the walk on its own."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to
from support import local_pipeline

from pipeline.similarity.duplicates import (
    STAR_ROUNDS,
    FindComponents,
    NotConvergedError,
    large_star,
    not_a_star,
    small_star,
    walk,
)
from pipeline.similarity.neighbors import Forest


def name(index: int) -> str:
    return f"gs://b/{index:06d}.jpg"


def neighbours_of(edges: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    neighbours: dict[str, set[str]] = collections.defaultdict(set)
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    return neighbours


def star_round(neighbours: dict[str, set[str]], step) -> dict[str, set[str]]:
    """step on every node with its neighbours, as the pipeline's GroupByKey hands them;
    the neighbours along the edges it gives."""
    return neighbours_of(edge for node in neighbours.items() for edge in step(node))


def rounds_to_stars(edges: set[tuple[str, str]]) -> int:
    """Rounds of large-star then small-star until every node is a centre or a leaf."""
    neighbours = neighbours_of(edges)
    for count in itertools.count(1):
        neighbours = star_round(star_round(neighbours, large_star), small_star)
        if not any(not_a_star(node) for node in neighbours.items()):
            return count


def expected_labels(edges) -> list[tuple[str, str]]:
    forest = Forest()
    for a, b in edges:
        forest.union(a, b)
    return sorted(
        (uri, min(members)) for members in forest.components() for uri in members
        if uri != min(members)
    )  # fmt: skip


# slow: a 20,000-node chain through every star round (about 5 s).
@pytest.mark.slow
def test_a_chain_needs_about_log2_of_its_length_in_rounds():
    # Measured: 1,000 images 10 rounds, 20,000 15, 100,000 17 (in URI order or reversed;
    # fewer in random order). STAR_ROUNDS covers a chain of 2^22 images.
    chain = [name(i) for i in range(20_000)]
    generator = np.random.default_rng(1)
    for order in (chain, chain[::-1], [chain[i] for i in generator.permutation(len(chain))]):
        rounds = rounds_to_stars(set(itertools.pairwise(order)))
        assert rounds <= np.log2(len(chain)) + 1
    assert STAR_ROUNDS >= 22 + 1


def test_components_equal_union_finds_on_random_graphs_and_chains():
    generator = np.random.default_rng(0)
    nodes = [name(int(i)) for i in generator.permutation(3000)]
    edges = [(nodes[a], nodes[b]) for a, b in generator.integers(3000, size=(1800, 2)) if a != b]
    edges += list(itertools.pairwise(nodes[:500]))  # a long chain in random URI order
    with local_pipeline() as p:
        labels = p | beam.Create(edges) | FindComponents() | beam.Distinct()
        assert_that(labels, equal_to(expected_labels(edges)))


def test_too_few_rounds_fail_the_run_rather_than_split_a_component():
    edges = list(itertools.pairwise(name(i) for i in range(64)))
    with pytest.raises(Exception, match="were not found in 1 rounds"), local_pipeline() as p:
        _ = p | beam.Create(edges) | FindComponents(rounds=1)
    assert issubclass(NotConvergedError, RuntimeError)


def test_the_walk_keeps_every_member_within_the_threshold_of_its_representative():
    # a-b and b-c above 0.9, a-c below; b is the largest image: one group of three.
    pairs = [("a", 10, "b", 20, 0.95), ("b", 20, "c", 10, 0.93), ("a", 10, "c", 10, 0.85)]
    assert walk(pairs, 0.9) == [[("b", 1.0), ("a", 0.95), ("c", 0.93)]]
    # a the largest: a keeps b; c, whose only similar image is taken, is in no group.
    pairs = [("a", 30, "b", 20, 0.95), ("b", 20, "c", 10, 0.93), ("a", 30, "c", 10, 0.85)]
    assert walk(pairs, 0.9) == [[("a", 1.0), ("b", 0.95)]]
    # Equal sizes: the smaller URI represents; a pair found twice counts once, at its
    # larger similarity.
    pairs = [("y", 5, "x", 5, 0.97), ("x", 5, "y", 5, 0.9700001)]
    assert walk(pairs, 0.97) == [[("x", 1.0), ("y", 0.9700001)]]
