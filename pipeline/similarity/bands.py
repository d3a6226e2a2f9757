"""Neighbour pairs by similarity band: how many pairs sit at each level, and a few seeded
sample pairs of each, so that a person picks --duplicate_threshold by looking."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import apache_beam as beam

from pipeline.common import seeded_rank

# Bands, highest first: each holds the similarities from `low` up to the band above.
BAND_FLOORS = (0.99, 0.97, 0.95, 0.90, 0.85, 0.80)
BELOW = "below"  # the pairs under the lowest band: counted, never sampled
SAMPLE_PAIRS = 6  # per band


@dataclass(frozen=True, order=True)
class Pair:
    """Two images, their URIs in order, and their similarity."""

    first: str
    second: str
    similarity: float


def band_name(floor: float) -> str:
    """ ">= 0.99" for the top band, "0.97-0.99" for the others."""
    position = BAND_FLOORS.index(floor)
    if position == 0:
        return f">= {floor:.2f}"
    return f"{floor:.2f}-{BAND_FLOORS[position - 1]:.2f}"


def band_of(similarity: float) -> str:
    for floor in BAND_FLOORS:
        if similarity >= floor:
            return band_name(floor)
    return BELOW


def unordered_pairs(row: dict):
    """A neighbours row to ((first, second), similarity) per neighbour, URIs in order: a
    pair listed from both sides is one pair."""
    for name, similarity in zip(row["neighbors"], row["similarities"], strict=True):
        if name != row["uri"]:
            yield tuple(sorted((row["uri"], name))), float(similarity)


def _banded(keyed: tuple[tuple[str, str], float]) -> tuple[str, Pair]:
    (first, second), similarity = keyed
    return band_of(similarity), Pair(first, second, similarity)


def pair_rank(seed: int, pair: Pair) -> str:
    """The sample is each band's pairs of smallest rank: the same for every run and runner."""
    return seeded_rank(seed, f"{pair.first}\n{pair.second}")


def describe_bands(counted: list[tuple[str, int]]) -> list[dict]:
    """Each band, highest first, with its count of pairs (0 for an empty band), then the
    pairs below the lowest."""
    found = dict(counted)
    rows = [
        {"band": band_name(floor), "low": floor, "pairs": found.get(band_name(floor), 0)}
        for floor in BAND_FLOORS
    ]
    return [*rows, {"band": BELOW, "low": None, "pairs": found.get(BELOW, 0)}]


def ordered_samples(sampled: list[tuple[str, list[Pair]]]) -> list[tuple[str, list[Pair]]]:
    """The sampled pairs per band, bands highest first, pairs most similar first."""
    found = dict(sampled)
    return [
        (band_name(floor), sorted(found[band_name(floor)], key=lambda p: (-p.similarity, p)))
        for floor in BAND_FLOORS
        if band_name(floor) in found
    ]


class BandPairs(beam.PTransform):
    """Neighbours rows to `counts` (one list: describe_bands) and `samples` (one list of
    (band, [Pair]) with at most SAMPLE_PAIRS pairs each, seeded by pair_rank)."""

    def __init__(self, seed: int):
        super().__init__()
        self._seed = seed

    def expand(self, rows):
        banded = (
            rows
            | "Pairs" >> beam.FlatMap(unordered_pairs)
            # Each side's search gives the same similarity, up to float rounding: one value.
            | "Each pair once" >> beam.CombinePerKey(max)
            | "Band" >> beam.Map(_banded)
        )
        counts = (
            banded
            | "Count per band" >> beam.combiners.Count.PerKey()
            | "All bands" >> beam.combiners.ToList()
            | "Describe bands" >> beam.Map(describe_bands)
        )
        samples = (
            banded
            | "Sampled bands" >> beam.Filter(lambda banded: banded[0] != BELOW)
            | "Sample per band"
            >> beam.combiners.Top.PerKey(
                SAMPLE_PAIRS, key=functools.partial(pair_rank, self._seed), reverse=True
            )
            | "All samples" >> beam.combiners.ToList()
            | "Order samples" >> beam.Map(ordered_samples)
        )
        return {"counts": counts, "samples": samples}
