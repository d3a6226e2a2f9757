"""keras.applications backbones and how to build an embedding model from one."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.models.weights import ImagenetWeights, Layout, WeightsUnavailableError, local_copy

if TYPE_CHECKING:
    import keras

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """A keras.applications model: where to find it, and what is known without building it."""

    application: str  # constructor in keras.applications, e.g. "ResNet50"
    module: str  # keras.applications submodule holding preprocess_input
    input_size: int
    channels: int  # of the last feature map: the length of a pooled embedding
    imagenet: ImagenetWeights
    layout: Layout  # of a weights file saved from this model without its top

    @property
    def feature_map_size(self) -> int:
        # Every backbone here downsamples by 32: 224 -> 7.
        return self.input_size // 32


_RESNET = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_EFFICIENTNET = "https://storage.googleapis.com/keras-applications/"


def _resnet(depth: int, imagenet_md5: str, layout: Layout) -> Backbone:
    """keras.applications.ResNet<depth>: its names follow from the depth."""
    file_name = f"resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    module = "resnet50" if depth == 50 else "resnet"
    weights = ImagenetWeights(_RESNET, file_name, imagenet_md5)
    return Backbone(f"ResNet{depth}", module, 224, 2048, weights, layout)


# Kept to models that share the same shape of code path: add a line, not a branch.
# The ImageNet files and hashes are keras.applications' own (keras/src/applications);
# the layouts are what tests/test_weights.py reads from files Keras saves.
BACKBONES: dict[str, Backbone] = {
    "resnet50": _resnet(
        50,
        "4d473c1dd8becc155b73f8504c6f6626",
        Layout(318, 23_587_712, "4da50645313943ac391b3a2dabea9d03189e49ac1b8370115cf4391064ea84ce"),
    ),
    "resnet101": _resnet(
        101,
        "88cf7a10940856eca736dc7b7e228a21",
        Layout(624, 42_658_176, "aae78c3dea169f73ab064028c06fa2637c1f6c07bb7dd5be5775ae93ede2c3e9"),
    ),
    "resnet152": _resnet(
        152,
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
        Layout(930, 58_370_944, "f0502d2e08a14eb4c55bd4473b8a0272791488b49f659b38bbd8caa7332449ee"),
    ),
    "efficientnet_b0": Backbone(
        "EfficientNetB0",
        "efficientnet",
        224,
        1280,
        ImagenetWeights(
            _EFFICIENTNET, "efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"
        ),
        Layout(312, 4_049_571, "a349d0b3f8448e5b692b8f93e1c5a35001ef0265766ed705a87843c21e6186ed"),
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which numbers come out of the model."""

    model: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "random", or a weights file path
    pooling: str = "avg"
    seed: int = 0

    @property
    def backbone(self) -> Backbone:
        return BACKBONES[self.model]

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def pretrained(self) -> bool:
        return self.weights != "random"

    def describe_weights(self) -> str:
        if self.weights == "random":
            return f"random (seed {self.seed}, NOT pretrained: embeddings carry no meaning)"
        return self.weights


def build_backbone(spec: ModelSpec) -> keras.Model:
    """The bare keras.applications model, without top, with the requested weights."""
    import keras

    constructor = getattr(keras.applications, spec.backbone.application)
    size = spec.input_size
    kwargs = dict(
        include_top=False,
        input_shape=(size, size, 3),
        pooling=None if spec.pooling == "none" else spec.pooling,
    )
    if spec.weights == "random":
        # Keras's own initialisers under a fixed seed: every worker process, and any
        # reference built the same way, gets bit-identical weights.
        keras.utils.set_random_seed(spec.seed)
        return constructor(weights=None, **kwargs)
    if spec.weights == "imagenet":
        try:
            return constructor(weights="imagenet", **kwargs)
        except Exception as error:  # Keras raises a bare Exception for fetch failures
            raise WeightsUnavailableError(
                f"cannot download the ImageNet weights for {spec.model} ({error}); "
                "use --weights PATH for a weights file you have (local or gs://), "
                "or --weights random for an offline smoke run"
            ) from error
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = constructor(weights=local_copy(spec.weights), **kwargs)
        # Keras may skip parts of a file it cannot match and only warn about it.
        skipped = [w for w in caught if "freshly-initialized" in str(w.message)]
        if skipped:
            raise ValueError(f"{len(skipped)} parts were not found in the file")
        return model
    except Exception as error:
        raise WeightsUnavailableError(
            f"cannot load --weights {spec.weights} into {spec.model} "
            f"({type(error).__name__}: {error}); give a Keras weights file saved from the "
            "same model with include_top=False, or use imagenet or random"
        ) from error


def build_embedding_model(spec: ModelSpec) -> keras.Model:
    """uint8 RGB images in, embeddings out, preprocess_input included."""
    import keras

    backbone = build_backbone(spec)
    preprocess_input = getattr(keras.applications, spec.backbone.module).preprocess_input
    size = spec.input_size
    images = keras.Input((size, size, 3), dtype="uint8", name="images")
    # Images travel between stages as uint8 (4x smaller); the model's own
    # preprocess_input turns them into what the network was trained on.
    features = backbone(preprocess_input(keras.ops.cast(images, "float32")))
    if not spec.pretrained:
        _LOG.warning("model %s uses %s", spec.model, spec.describe_weights())
    return keras.Model(images, features, name=f"{spec.model}_embedding")


def embedding_shape(spec: ModelSpec) -> tuple[int, ...]:
    """Shape of one image's embedding, e.g. (2048,) or (7, 7, 2048) for pooling none.

    Known from the table, so that the launching process never builds a model.
    """
    backbone = spec.backbone
    if spec.pooling == "none":
        side = backbone.feature_map_size
        return (side, side, backbone.channels)
    return (backbone.channels,)
