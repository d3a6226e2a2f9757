"""A RunInference ModelHandler for the embedding models (keras.applications and keras-hub)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipeline.common import NAMESPACE, counter
from pipeline.models import hub
from pipeline.models.backbones import KERAS_HUB, ModelSpec, applications_embedding_model
from pipeline.models.calibration import CalibrationSample
from pipeline.models.engines import AUTO, Embedder, Resolved, make_embedder
from pipeline.models.heads import HeadReference, ScoreHead

if TYPE_CHECKING:
    import keras


def build_embedding_model(spec: ModelSpec) -> keras.Model:
    """uint8 RGB images, as the load step sized them, in; embeddings out, the model's own
    normalisation included."""
    if spec.backbone.library == KERAS_HUB:
        return hub.embedding_model(spec)
    return applications_embedding_model(spec)


class EmbeddingFunction:
    """The embedding model as one TensorFlow function that takes any batch size.

    Keras's predict_on_batch traces its function again for a second batch size (about a
    second on 2 cores), and Beam's batches vary in size: tracing once for a batch
    dimension of None spares every worker process that second trace.
    """

    def __init__(self, model: keras.Model):
        import tensorflow as tf

        self.size = model.input_shape[1]
        signature = [tf.TensorSpec([None, self.size, self.size, 3], tf.uint8)]
        self._embed = tf.function(
            lambda images: model(images, training=False),
            input_signature=signature,
            autograph=False,
        )

    def concrete_function(self) -> Any:
        """The traced graph, as OpenVINO converts it."""
        return self._embed.get_concrete_function()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._embed(images), dtype=np.float32)


class WorkerModel:
    """One worker process's embedder, its score heads and what it runs on, counted once in
    the run's metrics: Beam's counters count only while an element is processed, not in
    load_model."""

    def __init__(self, embedder: Embedder, resolved: Resolved, heads: tuple[ScoreHead, ...] = ()):
        self.embed = embedder
        self.resolved = resolved
        self.heads = heads
        self._counted = False
        self._lock = threading.Lock()

    def count_once(self) -> None:
        with self._lock:
            if self._counted:
                return
            self._counted = True
        counter(self.resolved.counter).inc()
        if self.resolved.fallback:
            counter("engine_fallback_tensorflow").inc()


def spec_embedder(
    spec: ModelSpec, engine: str, precision: str, calibration: np.ndarray | None = None
) -> tuple[Embedder, Resolved]:
    """The spec's embedding model on the engine and precision asked for, resolved here as
    on a worker (engines.make_embedder). calibration: int8's calibration images."""
    function = EmbeddingFunction(build_embedding_model(spec))
    return make_embedder(
        function,
        spec.model,
        engine,
        precision,
        calibration=calibration,
        transformer=spec.backbone.library == KERAS_HUB,
    )


class Embedded(NamedTuple):
    """One image's embedding, its score heads' scores (in --score_head order), and the
    engine and precision its worker process ran: what ran is recorded as data, whatever
    auto chose or fell back to."""

    embedding: np.ndarray
    ran: Resolved
    scores: tuple[float, ...] = ()


class KerasEmbeddingHandler(ModelHandler[np.ndarray, Embedded, WorkerModel]):
    """Loads the embedding model once per worker process, on the engine --engine and
    --precision choose there; embeds uint8 image batches.

    calibration: for --precision int8, the sample every worker process loads and quantises
    the model on, the same for all, so that no embedding depends on the worker that made it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        min_batch_size: int,
        max_batch_size: int,
        engine: str = AUTO,
        precision: str = AUTO,
        calibration: CalibrationSample | None = None,
        heads: tuple[HeadReference, ...] = (),
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._spec = spec
        self._engine = engine
        self._precision = precision
        self._calibration = calibration
        self._heads = heads

    def load_model(self) -> WorkerModel:
        # Before the model is built: a sample or a head that does not load fails the
        # worker at once.
        calibration = self._calibration.load() if self._calibration else None
        heads = tuple(head.read() for head in self._heads)
        embedder, resolved = spec_embedder(self._spec, self._engine, self._precision, calibration)
        return WorkerModel(embedder, resolved, heads)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: WorkerModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Embedded]:
        model.count_once()
        # One compiled function for every batch; model.predict() would also build a
        # dataset and callbacks for each.
        embeddings = model.embed(np.stack(batch))
        if model.heads:
            scores = np.stack([head(embeddings) for head in model.heads], axis=1).tolist()
        else:
            scores = [()] * len(embeddings)
        return [
            Embedded(embedding, model.resolved, tuple(scored))
            for embedding, scored in zip(embeddings, scores, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE
