"""What the summary records of a labelled run (--zero_shot_labels): the labels, where they
came from, and how many images each is the best label of."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipeline.common import ImageKey
from pipeline.models import LabelList
from pipeline.outputs.optional import OptionalOutput


def _best_label(keyed: tuple[ImageKey, Any]) -> str:
    return keyed[0].labels.label


def describe_labels(counted: list[tuple[str, int]], labels: LabelList, template: str) -> dict:
    """label_counts: the images per best label, most first (equal counts in label
    order); labels that no image got are left out."""
    ordered = sorted(counted, key=lambda pair: (-pair[1], pair[0]))
    return {
        "count": len(labels.labels),
        "source": labels.source,
        "template": template,
        "labelled": sum(count for _, count in ordered),
        "label_counts": dict(ordered),
    }


class CountLabels(OptionalOutput):
    """The stored images' best labels counted; gives the run's `description` of them."""

    name = "labels"
    step = "Count labels"
    reads = ("stored",)

    def __init__(self, labels: LabelList, template: str):
        super().__init__()
        self._labels = labels
        self._template = template

    def expand(self, run: dict[str, beam.PCollection]):
        counted = (
            run["stored"]
            | "Best labels" >> beam.Map(_best_label)
            | "Per label" >> beam.combiners.Count.PerElement()
            | "All labels" >> beam.combiners.ToList()
        )
        described = counted | "Describe" >> beam.Map(describe_labels, self._labels, self._template)
        return {"description": described}
