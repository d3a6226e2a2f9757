"""Beam metrics counters under one namespace, visible in the Dataflow console, and in a
local run's console (pipeline.common.progress)."""

from apache_beam.metrics import Metrics

from pipeline.common import progress

NAMESPACE = "image_embeddings"


class Counter:
    """Beam's counter of that name; each count also goes to the local run's progress."""

    def __init__(self, name: str):
        self._name = name
        self._metric = Metrics.counter(NAMESPACE, name)

    def inc(self, amount: int = 1) -> None:
        self._metric.inc(amount)
        progress.add(self._name, amount)


def counter(name: str) -> Counter:
    return Counter(name)
