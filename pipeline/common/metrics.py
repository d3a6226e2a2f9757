"""Beam metrics counters under one namespace, visible in the Dataflow console."""

from apache_beam.metrics import Metrics

NAMESPACE = "image_embeddings"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)
