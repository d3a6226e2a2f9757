"""A RunInference ModelHandler for keras.applications embedding models."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from pipeline.backbones import ModelSpec, build_embedding_model
from pipeline.metrics import NAMESPACE

if TYPE_CHECKING:
    import keras


class KerasEmbeddingHandler(ModelHandler[np.ndarray, np.ndarray, "keras.Model"]):
    """Loads the embedding model once per worker process; embeds uint8 image batches."""

    def __init__(self, spec: ModelSpec, *, min_batch_size: int, max_batch_size: int):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._spec = spec

    def load_model(self) -> keras.Model:
        return build_embedding_model(self._spec)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: keras.Model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[np.ndarray]:
        # predict_on_batch reuses one compiled function; predict() would build a
        # dataset and callbacks for every batch.
        embeddings = np.asarray(model.predict_on_batch(np.stack(batch)), dtype=np.float32)
        return list(embeddings)

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE
