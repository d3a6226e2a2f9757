"""The models: the table of backbones (keras.applications and keras-hub) and their
weights, the RunInference handler, the extraction step, zero-shot labels, score heads."""

from pipeline.models.backbones import (
    APPLICATIONS,
    BACKBONES,
    KERAS_HUB,
    Backbone,
    ModelSpec,
    embedding_shape,
)
from pipeline.models.calibration import CALIBRATION_IMAGES, CalibrationSample, sample_digest
from pipeline.models.engines import (
    ENGINES,
    INT8,
    PRECISIONS,
    EngineUnavailableError,
    make_embedder,
)
from pipeline.models.extraction import ExtractEmbeddings, ReportProgressFn
from pipeline.models.handler import (
    EmbeddingFunction,
    KerasEmbeddingHandler,
    build_embedding_model,
    spec_embedder,
)
from pipeline.models.heads import (
    HeadError,
    HeadReference,
    HeadSpec,
    ScoreHead,
    parse_heads,
    read_head,
    recorded_heads,
    reference,
)
from pipeline.models.labels import (
    DEFAULT_TEMPLATE,
    EMBEDDED_COUNTER,
    MAX_LABELS,
    TOP_LABELS,
    LabelImages,
    LabelList,
    LabelsError,
    check_template,
    read_labels,
)
from pipeline.models.quantisation import MIN_CALIBRATION_IMAGES
from pipeline.models.text import TextTower
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
    "CALIBRATION_IMAGES",
    "DEFAULT_TEMPLATE",
    "EMBEDDED_COUNTER",
    "ENGINES",
    "INT8",
    "KERAS_HUB",
    "MAX_LABELS",
    "MIN_CALIBRATION_IMAGES",
    "PRECISIONS",
    "TOP_LABELS",
    "Backbone",
    "CalibrationSample",
    "EmbeddingFunction",
    "EngineUnavailableError",
    "ExtractEmbeddings",
    "HeadError",
    "HeadReference",
    "HeadSpec",
    "KerasEmbeddingHandler",
    "LabelImages",
    "LabelList",
    "LabelsError",
    "ModelSpec",
    "ReportProgressFn",
    "ScoreHead",
    "TextTower",
    "WeightsUnavailableError",
    "baked_preset",
    "build_embedding_model",
    "check_preset_folder",
    "check_template",
    "check_weights_file",
    "embedding_shape",
    "ensure_imagenet",
    "make_embedder",
    "parse_heads",
    "read_head",
    "read_labels",
    "recorded_heads",
    "reference",
    "sample_digest",
    "spec_embedder",
]
