"""What the summary records of a scored run (--score_head): each score's count, mean and
deciles over the stored images."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantiles

from pipeline.common import ImageKey
from pipeline.outputs.optional import OptionalOutput

DECILES = 11  # the minimum, the nine deciles between, the maximum


def _named_scores(keyed: tuple[ImageKey, object], names: tuple[str, ...]):
    return zip(names, keyed[0].scores, strict=True)


def describe_scores(joined: list, names: tuple[str, ...]) -> dict:
    """{name: {count, mean, deciles}} in the heads' order; a score no image got has count
    0 and no mean or deciles."""
    found = {name: parts for name, parts in joined}
    described = {}
    for name in names:
        parts = found.get(name, {"count": [], "mean": [], "deciles": []})
        count = parts["count"][0] if parts["count"] else 0
        described[name] = {
            "count": count,
            "mean": round(float(parts["mean"][0]), 6) if count else None,
            "deciles": [round(float(value), 6) for value in parts["deciles"][0]] if count else [],
        }
    return described


class DescribeScores(OptionalOutput):
    """Each stored image's scores summed up per head: count, mean and deciles (Beam's
    ApproximateQuantiles, which holds a bounded sample per key, not every score)."""

    name = "scores"
    step = "Describe scores"
    reads = ("stored",)

    def __init__(self, names: tuple[str, ...]):
        super().__init__()
        self._names = names

    def expand(self, run: dict[str, beam.PCollection]):
        scores = run["stored"] | "Scores" >> beam.FlatMap(_named_scores, self._names)
        parts = {
            "count": scores | "Count" >> beam.combiners.Count.PerKey(),
            "mean": scores | "Mean" >> beam.combiners.Mean.PerKey(),
            "deciles": scores | "Deciles" >> ApproximateQuantiles.PerKey(DECILES),
        }
        described = (
            parts
            | "Join" >> beam.CoGroupByKey()
            | "All scores" >> beam.combiners.ToList()
            | "Describe" >> beam.Map(describe_scores, self._names)
        )
        return {"description": described}
