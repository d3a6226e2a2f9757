"""The models: one table line each (keras.applications and keras-hub), and how an embedding
model is built from a line."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.inputs import Resize
from pipeline.models.seeding import keras_seed
from pipeline.models.weights import (
    ImagenetWeights,
    Layout,
    WeightsUnavailableError,
    local_copy,
    preset_embedding_size,
)

if TYPE_CHECKING:
    import keras

_LOG = logging.getLogger(__name__)


APPLICATIONS = "keras.applications"
KERAS_HUB = "keras_hub"


@dataclass(frozen=True)
class Architecture:
    """A keras-hub constructor and its arguments; an argument may be an Architecture."""

    class_name: str
    args: dict[str, Any]

    def get(self, path: str) -> Any:
        """The argument at a dotted path, e.g. "vision_encoder.patch_size"."""
        value: Any = self
        for name in path.split("."):
            value = value.args[name]
        return value


def _arch(class_name: str, **args: Any) -> Architecture:
    return Architecture(class_name, args)


@dataclass(frozen=True)
class Backbone:
    """One model: where it comes from, how its input is made, what comes out; all known
    without building it, so that the launching process never imports a model library.
    A line is an ApplicationsBackbone or a HubBackbone, with its library's own fields."""

    library: str  # APPLICATIONS or KERAS_HUB
    class_name: str  # in keras.applications or keras_hub.models, e.g. "ResNet50"
    input_size: int
    embedding_size: int  # of one pooled embedding (for keras.applications: channels)
    # How the load step resizes; None: --resize decides (bilinear squash or centre crop).
    resize: Resize | None
    source: str = ""  # where the resize and normalisation come from
    text_tower: bool = False

    @property
    def pretrained_weights(self) -> str:
        return "imagenet" if self.library == APPLICATIONS else "pretrained"


@dataclass(frozen=True)
class ApplicationsBackbone(Backbone):
    """A keras.applications model: its preprocessing and its ImageNet weights."""

    module: str = ""  # inside the model: keras.applications' preprocess_input of `module`
    imagenet: ImagenetWeights | None = None
    layout: Layout | None = None  # of a weights file saved from this model without its top

    @property
    def feature_map_size(self) -> int:
        # Every keras.applications backbone here downsamples by 32: 224 -> 7.
        return self.input_size // 32


@dataclass(frozen=True)
class HubBackbone(Backbone):
    """A keras-hub model: its normalisation, its preset and architecture, how it embeds,
    and its text tower's tokens."""

    # Inside the model: (x / 255 - mean) / std.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    preset: str = ""  # the pretrained preset's handle
    architecture: Architecture | None = None  # what --weights random builds
    parameters: int = 0  # the published count of the whole backbone, text tower included
    pooling: str = ""  # what one embedding is
    embedding: str = ""  # "vision_embeddings" (get_vision_embeddings) or "cls_token"
    normalised: bool = False  # L2-normalised, as retrieval systems store them
    embedding_size_at: str = ""  # the architecture argument that is the embedding size
    # The arguments a preset folder must share with the table: with them the resize and
    # the input size fit; depth and width may differ (smaller presets of the family).
    fixed: tuple[str, ...] = ()
    resizable: bool = False  # position embeddings interpolate to input_size at load
    tokenizer: str = ""  # keras_hub.models class of the text tower's tokenizer
    sequence_length: int = 0  # of the text tower's token ids
    start_token: bool = False  # token ids begin with the tokenizer's start token


_RESNET = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
_EFFICIENTNET = "https://storage.googleapis.com/keras-applications/"


def _resnet(depth: int, imagenet_md5: str, layout: Layout) -> ApplicationsBackbone:
    """keras.applications.ResNet<depth>: its names follow from the depth."""
    file_name = f"resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    module = "resnet50" if depth == 50 else "resnet"
    weights = ImagenetWeights(_RESNET, file_name, imagenet_md5)
    return ApplicationsBackbone(
        APPLICATIONS, f"ResNet{depth}", 224, 2048, None, module=module,
        source="keras.applications resnet.preprocess_input (caffe: BGR, ImageNet means)",
        imagenet=weights, layout=layout,
    )  # fmt: skip


# OpenAI CLIP's transform (openai/CLIP clip/clip.py _transform): bicubic resize of the
# shorter side, centre crop, then these mean and std.
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_SOURCE = "openai/CLIP clip/clip.py _transform"
# DINOv2's evaluation transform (facebookresearch/dinov2 dinov2/data/transforms.py,
# make_classification_eval_transform): bicubic shorter side 256, centre crop 224, ImageNet.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_DINOV2_SOURCE = (
    "facebookresearch/dinov2 dinov2/data/transforms.py make_classification_eval_transform"
)
# SigLIP 2, fixed resolution: squash to the size, bilinear (the HF processor config of
# google/siglip2-*: resample 2), then x / 127.5 - 1 (big_vision SigLIP2_demo:
# resize(RES)|value_range(-1, 1)), i.e. mean 0.5 and std 0.5.
_SIGLIP_SOURCE = "google/siglip2 preprocessor_config.json; big_vision SigLIP2_demo.ipynb"


def _clip(
    size: int,
    patch: int,
    vision: tuple[int, int, int, int],
    text: tuple[int, int, int, int],
    projection: int,
    parameters: int,
    preset: str,
) -> HubBackbone:
    """A CLIPBackbone line: vision and text as (hidden, layers, heads, intermediate)."""
    hidden, layers, heads, intermediate = vision
    width, depth, text_heads, text_intermediate = text
    architecture = _arch(
        "CLIPBackbone",
        vision_encoder=_arch(
            "CLIPVisionEncoder",
            patch_size=patch,
            hidden_dim=hidden,
            num_layers=layers,
            num_heads=heads,
            intermediate_dim=intermediate,
            intermediate_activation="quick_gelu",
            image_shape=(size, size, 3),
        ),
        text_encoder=_arch(
            "CLIPTextEncoder",
            vocabulary_size=49408,
            embedding_dim=width,
            hidden_dim=width,
            num_layers=depth,
            num_heads=text_heads,
            intermediate_dim=text_intermediate,
            intermediate_activation="quick_gelu",
            max_sequence_length=77,
        ),
        projection_dim=projection,
    )
    return HubBackbone(
        KERAS_HUB, "CLIPBackbone", size, projection, Resize(size, "shorter_side", "bicubic", size),
        mean=_CLIP_MEAN, std=_CLIP_STD, source=_CLIP_SOURCE, text_tower=True, preset=preset,
        architecture=architecture, parameters=parameters, pooling="cls_projection",
        embedding="vision_embeddings", normalised=True, embedding_size_at="projection_dim",
        fixed=("vision_encoder.patch_size", "vision_encoder.image_shape"),
        tokenizer="CLIPTokenizer", sequence_length=77, start_token=True,
    )  # fmt: skip


def _siglip2(
    size: int, patch: int, tower: tuple[int, int, int, int], parameters: int, preset: str
) -> HubBackbone:
    """A SigLIPBackbone line with SigLIP 2's Gemma vocabulary; both towers as (hidden,
    layers, heads, intermediate)."""
    hidden, layers, heads, intermediate = tower
    shared = dict(
        hidden_dim=hidden, num_layers=layers, num_heads=heads, intermediate_dim=intermediate,
        intermediate_activation="gelu_approximate", layer_norm_epsilon=1e-6,
    )  # fmt: skip
    architecture = _arch(
        "SigLIPBackbone",
        vision_encoder=_arch(
            "SigLIPVisionEncoder", patch_size=patch, image_shape=(size, size, 3), **shared
        ),
        text_encoder=_arch(
            "SigLIPTextEncoder",
            vocabulary_size=256000,
            embedding_dim=hidden,
            max_sequence_length=64,
            projection_dim=hidden,
            **shared,
        ),
    )
    return HubBackbone(
        KERAS_HUB, "SigLIPBackbone", size, hidden, Resize(size, "squash", "bilinear"),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), source=_SIGLIP_SOURCE, text_tower=True,
        preset=preset, architecture=architecture, parameters=parameters,
        pooling="attention_pool", embedding="vision_embeddings", normalised=True,
        embedding_size_at="vision_encoder.hidden_dim",
        fixed=("vision_encoder.patch_size", "vision_encoder.image_shape"),
        tokenizer="SigLIPTokenizer", sequence_length=64,
    )  # fmt: skip


def _dinov2(hidden: int, heads: int, parameters: int, preset: str) -> HubBackbone:
    """A DINOV2Backbone line: ViT/14, 12 layers, its position embeddings made for 518 and
    interpolated to 224 when loaded (keras-hub's convert_dinov2.py)."""
    architecture = _arch(
        "DINOV2Backbone", patch_size=14, num_layers=12, hidden_dim=hidden, num_heads=heads,
        intermediate_dim=4 * hidden, layer_scale_init_value=1.0, image_shape=(518, 518, 3),
        position_embedding_shape=(518, 518),
    )  # fmt: skip
    return HubBackbone(
        KERAS_HUB, "DINOV2Backbone", 224, hidden, Resize(224, "shorter_side", "bicubic", 256),
        mean=_IMAGENET_MEAN, std=_IMAGENET_STD, source=_DINOV2_SOURCE, preset=preset,
        architecture=architecture, parameters=parameters, pooling="cls", embedding="cls_token",
        embedding_size_at="hidden_dim", fixed=("patch_size",), resizable=True,
    )  # fmt: skip


# One line per model: add a line, not a branch. The ImageNet files and hashes are
# keras.applications' own (keras/src/applications); the layouts are what
# tests/test_weights.py reads from files Keras saves. The keras-hub lines are the presets'
# architectures (keras-hub's checkpoint conversion scripts, from the original configs);
# tests/test_model_table.py builds each and counts its parameters against the published
# figure.
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
    "efficientnet_b0": ApplicationsBackbone(
        APPLICATIONS,
        "EfficientNetB0",
        224,
        1280,
        None,
        module="efficientnet",
        source="keras.applications efficientnet (rescaling inside the model)",
        imagenet=ImagenetWeights(
            _EFFICIENTNET, "efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"
        ),
        layout=Layout(
            312, 4_049_571, "a349d0b3f8448e5b692b8f93e1c5a35001ef0265766ed705a87843c21e6186ed"
        ),
    ),
    "clip_vit_base_patch16": _clip(
        224, 16, (768, 12, 12, 3072), (512, 12, 8, 2048), 512, 149_620_934,
        "kaggle://keras/clip/keras/clip_vit_base_patch16/3",
    ),
    "clip_vit_large_patch14": _clip(
        224, 14, (1024, 24, 16, 4096), (768, 12, 12, 3072), 768, 427_616_770,
        "kaggle://keras/clip/keras/clip_vit_large_patch14/3",
    ),
    "siglip2_base_patch16_224": _siglip2(
        224, 16, (768, 12, 12, 3072), 375_188_230,
        "kaggle://keras/siglip/keras/siglip2_base_patch16_224/1",
    ),
    "siglip2_so400m_patch14_384": _siglip2(
        384, 14, (1152, 27, 16, 4304), 1_136_009_291,
        "kaggle://keras/siglip/keras/siglip2_so400m_patch14_384/1",
    ),
    "dinov2_small": _dinov2(384, 6, 22_582_656, "kaggle://keras/dinov2/keras/dinov2_small/1"),
    "dinov2_base": _dinov2(768, 12, 87_632_640, "kaggle://keras/dinov2/keras/dinov2_base/1"),
}  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides which numbers come out of the model."""

    model: str = "resnet50"
    # "imagenet" (keras.applications) or "pretrained" (keras-hub), "random", a Keras
    # weights file (keras.applications) or a preset folder (keras-hub)
    weights: str = "imagenet"
    pooling: str = "avg"
    seed: int = 0

    @classmethod
    def of(cls, model: str, weights: str, pooling: str, seed: int) -> ModelSpec:
        """The spec a run's options ask for: `pretrained` is `imagenet` for the
        keras.applications models, and a keras-hub model pools as it was trained."""
        backbone = BACKBONES[model]
        if weights in ("pretrained", "imagenet"):
            weights = backbone.pretrained_weights
        if backbone.library == KERAS_HUB:
            pooling = backbone.pooling
        return cls(model, weights, pooling, seed)

    @property
    def backbone(self) -> Backbone:
        return BACKBONES[self.model]

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def pretrained(self) -> bool:
        return self.weights != "random"

    @property
    def from_file(self) -> bool:
        """The weights are a file or folder the user gives."""
        return self.weights not in ("imagenet", "pretrained", "random")

    def resize(self, policy: str) -> Resize:
        """How the load step sizes images: the model's own rule, or `policy` (--resize)
        with bilinear filtering for the keras.applications models."""
        return self.backbone.resize or Resize(self.input_size, policy)

    def describe_weights(self) -> str:
        if self.weights == "random":
            return f"random (seed {self.seed}, NOT pretrained: embeddings carry no meaning)"
        return self.weights


def build_backbone(spec: ModelSpec) -> keras.Model:
    """The bare keras.applications model, without top, with the requested weights."""
    import keras

    constructor = getattr(keras.applications, spec.backbone.class_name)
    size = spec.input_size
    kwargs = dict(
        include_top=False,
        input_shape=(size, size, 3),
        pooling=None if spec.pooling == "none" else spec.pooling,
    )
    if spec.weights == "random":
        # Keras's own initialisers under a fixed seed: every worker process, and any
        # reference built the same way, gets bit-identical weights.
        with keras_seed(spec.seed):
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


def applications_embedding_model(spec: ModelSpec) -> keras.Model:
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
        # The launch warns once (plan.py); each worker's model says it in its own log.
        _LOG.info("model %s uses %s", spec.model, spec.describe_weights())
    return keras.Model(images, features, name=f"{spec.model}_embedding")


def embedding_shape(spec: ModelSpec) -> tuple[int, ...]:
    """Shape of one image's embedding, e.g. (2048,) or (7, 7, 2048) for pooling none.

    Known from the table (or a preset folder's config), so that the launching process
    never builds a model.
    """
    backbone = spec.backbone
    if backbone.library == KERAS_HUB:
        if spec.from_file:
            return (preset_embedding_size(spec.weights, backbone),)
        return (backbone.embedding_size,)
    if spec.pooling == "none":
        side = backbone.feature_map_size
        return (side, side, backbone.embedding_size)
    return (backbone.embedding_size,)
