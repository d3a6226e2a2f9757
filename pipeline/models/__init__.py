"""The models: the table of backbones (keras.applications and keras-hub) and their
weights, the RunInference handler, the extraction step."""

from pipeline.models.backbones import (
    APPLICATIONS,
    BACKBONES,
    KERAS_HUB,
    Backbone,
    ModelSpec,
    embedding_shape,
)
from pipeline.models.engines import ENGINES, PRECISIONS, EngineUnavailableError
from pipeline.models.extraction import ExtractEmbeddings, ReportProgressFn
from pipeline.models.handler import KerasEmbeddingHandler
from pipeline.models.weights import (
    BAKED_PRESETS,
    WeightsUnavailableError,
    baked_preset,
    check_preset_folder,
    check_weights_file,
    ensure_imagenet,
)

__all__ = [
    "APPLICATIONS",
    "BACKBONES",
    "BAKED_PRESETS",
    "ENGINES",
    "KERAS_HUB",
    "PRECISIONS",
    "Backbone",
    "EngineUnavailableError",
    "ExtractEmbeddings",
    "KerasEmbeddingHandler",
    "ModelSpec",
    "ReportProgressFn",
    "WeightsUnavailableError",
    "baked_preset",
    "check_preset_folder",
    "check_weights_file",
    "embedding_shape",
    "ensure_imagenet",
]
