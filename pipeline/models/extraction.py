"""The extract step: batched inference through RunInference, with a dead letter per batch."""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from pipeline.common import Failure, ImageKey
from pipeline.models.engines import Resolved
from pipeline.models.handler import Embedded

_LOG = logging.getLogger(__name__)


def _batch_failures(batch_and_error):
    """A failed inference batch to one Failure per image in it."""
    batch, (error_type, error_repr, _traceback) = batch_and_error
    name = getattr(error_type, "__name__", str(error_type))
    for key, _pixels in batch:
        yield Failure(key.uri, "extract", name, error_repr[:2000])


def _embedding(keyed: tuple[ImageKey, Embedded]) -> tuple[ImageKey, np.ndarray]:
    """The embedding, its scores riding in the key."""
    key, embedded = keyed
    if embedded.scores:
        key = dataclasses.replace(key, scores=embedded.scores)
    return key, embedded.embedding


def _ran(keyed: tuple[ImageKey, Embedded]) -> Resolved:
    return keyed[1].ran


class EnginesRanFn(beam.CombineFn):
    """What ran on the workers, each engine and precision once: the summary's
    engines_ran, in name order (a fallback's reason with it)."""

    def create_accumulator(self) -> set[Resolved]:
        return set()

    def add_input(self, ran: set[Resolved], resolved: Resolved) -> set[Resolved]:
        ran.add(resolved)
        return ran

    def merge_accumulators(self, accumulators) -> set[Resolved]:
        return set().union(*accumulators)

    def extract_output(self, ran: set[Resolved]) -> list[dict[str, str]]:
        return [
            {"engine": resolved.engine, "precision": resolved.precision}
            | ({"fallback": resolved.fallback} if resolved.fallback else {})
            for resolved in sorted(ran, key=dataclasses.astuple)
        ]


class ExtractEmbeddings(beam.PTransform):
    """(ImageKey, pixels) to (ImageKey, embedding) in batches, by a handler whose
    predictions are Embedded; outputs embeddings, failed, and engines_ran (one list)."""

    def __init__(self, handler: ModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, images_):
        inferred, errors = (
            images_
            | "Infer" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        failed = errors.failed_inferences | "Failed batches" >> beam.FlatMap(_batch_failures)
        return {
            "embeddings": inferred | "Embeddings" >> beam.Map(_embedding),
            "failed": failed,
            "engines_ran": inferred
            | "What ran" >> beam.Map(_ran)
            | "Engines that ran" >> beam.CombineGlobally(EnginesRanFn()),
        }


class ReportProgressFn(beam.DoFn):
    """Passes elements through; logs this worker's progress every `interval` seconds."""

    def __init__(self, interval: float = 20.0):
        self._interval = interval

    def setup(self):
        self._count = 0
        self._started = time.monotonic()
        self._last_report = self._started

    def process(self, element):
        self._count += 1
        now = time.monotonic()
        if now - self._last_report >= self._interval:
            self._last_report = now
            _LOG.info(
                "worker %d: %d images embedded, %.1f images/s",
                os.getpid(),
                self._count,
                self._count / (now - self._started),
            )
        yield element
