"""The extract step: batched inference through RunInference, with a dead letter per batch."""

from __future__ import annotations

import logging
import os
import time

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from pipeline.common import Failure

_LOG = logging.getLogger(__name__)


def _batch_failures(batch_and_error):
    """A failed inference batch to one Failure per image in it."""
    batch, (error_type, error_repr, _traceback) = batch_and_error
    name = getattr(error_type, "__name__", str(error_type))
    for key, _pixels in batch:
        yield Failure(key.uri, "extract", name, error_repr[:2000])


class ExtractEmbeddings(beam.PTransform):
    """(ImageKey, pixels) to (ImageKey, embedding) in batches; outputs embeddings and failed."""

    def __init__(self, handler: ModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, images_):
        embeddings, errors = (
            images_
            | "Infer" >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        failed = errors.failed_inferences | "Failed batches" >> beam.FlatMap(_batch_failures)
        return {"embeddings": embeddings, "failed": failed}


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
