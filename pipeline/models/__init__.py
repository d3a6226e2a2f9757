"""The models: backbones and their weights, the RunInference handler, the extraction step."""

from pipeline.models.backbones import BACKBONES, ModelSpec, embedding_shape
from pipeline.models.extraction import ExtractEmbeddings, ReportProgressFn
from pipeline.models.handler import KerasEmbeddingHandler
from pipeline.models.weights import WeightsUnavailableError, check_weights_file, ensure_imagenet

__all__ = [
    "BACKBONES",
    "ExtractEmbeddings",
    "KerasEmbeddingHandler",
    "ModelSpec",
    "ReportProgressFn",
    "WeightsUnavailableError",
    "check_weights_file",
    "embedding_shape",
    "ensure_imagenet",
]
