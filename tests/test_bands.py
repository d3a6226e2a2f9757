"""Neighbour pairs by similarity band (similarity/bands.py): each pair counted once in its
band, and each band's sample the same whatever order the rows come in."""

from __future__ import annotations

import hashlib
import random

import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to
from support import local_pipeline

from pipeline.similarity.bands import BAND_FLOORS, BELOW, BandPairs, Pair, band_of


def test_a_similarity_falls_in_the_band_whose_floor_it_reaches():
    assert band_of(1.0) == band_of(0.99) == ">= 0.99"
    assert band_of(0.9899999) == band_of(0.97) == "0.97-0.99"
    assert band_of(0.85) == "0.85-0.90"
    assert band_of(0.80) == "0.80-0.85"
    assert band_of(0.7999) == band_of(-1.0) == BELOW


def neighbour_rows(count: int, k: int, seed: int) -> list[dict]:
    """Each of count images listing its k most similar others (a symmetric matrix)."""
    rng = np.random.default_rng(seed)
    similarity = rng.uniform(0.5, 1.0, (count, count)).astype(np.float32)
    similarity = np.maximum(similarity, similarity.T)
    np.fill_diagonal(similarity, -1)
    uris = [f"gs://b/{i:03d}.jpg" for i in range(count)]
    rows = []
    for i, uri in enumerate(uris):
        order = np.argsort(-similarity[i], kind="stable")[:k]
        rows.append(
            {
                "uri": uri,
                "neighbors": [uris[j] for j in order],
                "similarities": [float(similarity[i, j]) for j in order],
            }
        )
    return rows


def reference(rows: list[dict], seed: int) -> tuple[list, list]:
    pairs = {}
    for row in rows:
        for name, similarity in zip(row["neighbors"], row["similarities"], strict=True):
            pairs[tuple(sorted((row["uri"], name)))] = similarity
    banded: dict[str, list[Pair]] = {}
    for (first, second), similarity in pairs.items():
        banded.setdefault(band_of(similarity), []).append(Pair(first, second, similarity))
    names = [band_of(floor) for floor in BAND_FLOORS]
    counts = [(name, len(banded.get(name, []))) for name in [*names, BELOW]]

    def rank(pair: Pair) -> str:
        return hashlib.sha256(f"{seed}:{pair.first}\n{pair.second}".encode()).hexdigest()

    samples = [
        (name, sorted(sorted(banded[name], key=rank)[:6], key=lambda p: (-p.similarity, p)))
        for name in names
        if banded.get(name)
    ]
    return counts, samples


def test_pairs_are_counted_once_per_band_and_sampled_alike_in_any_order():
    rows = neighbour_rows(60, 30, seed=2)
    counts, samples = reference(rows, seed=7)
    assert sum(count for _, count in counts) > 240  # pairs listed from one side or both
    assert sum(bool(pairs) for _, pairs in samples) >= 5
    for order in range(2):
        shuffled = rows[:]
        random.Random(order).shuffle(shuffled)
        with local_pipeline() as p:
            found = p | beam.Create(shuffled) | BandPairs(seed=7)
            per_band = found["counts"] | beam.Map(
                lambda described: [(row["band"], row["pairs"]) for row in described]
            )
            assert_that(per_band, equal_to([counts]), label="counts")
            assert_that(found["samples"], equal_to([samples]), label="samples")
