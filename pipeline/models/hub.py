"""keras-hub models (CLIP, SigLIP 2, DINOv2): built from the table under a seed, or loaded
from a preset folder or the published preset, then made into an embedding model."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from pipeline.common import path_inside
from pipeline.models.backbones import Architecture, ModelSpec
from pipeline.models.seeding import keras_seed
from pipeline.models.weights import (
    PRESET_CONFIG,
    WeightsUnavailableError,
    baked_preset,
    copy_file,
    remote_preset_files,
)

if TYPE_CHECKING:
    import keras

_LOG = logging.getLogger(__name__)


def build(architecture: Architecture) -> Any:
    """The keras-hub model an Architecture names, its nested layers built first."""
    import keras_hub

    args = {
        name: build(value) if isinstance(value, Architecture) else value
        for name, value in architecture.args.items()
    }
    return getattr(keras_hub.models, architecture.class_name)(**args)


def load_backbone(spec: ModelSpec) -> Any:
    """The whole keras-hub backbone (both towers) with the spec's weights."""
    line = spec.backbone
    if spec.weights == "random":
        # Keras's own initialisers under a fixed seed: every worker process, and any
        # reference built the same way, gets the same weights.
        architecture = line.architecture
        if line.resizable:
            architecture = _with_image_size(architecture, line.input_size)
        with keras_seed(spec.seed):
            return build(architecture)
    # The preset first: a folder refused (local_preset_copy) says so before TensorFlow
    # loads and logs.
    preset = preset_location(spec)
    import keras_hub

    constructor = getattr(keras_hub.models, line.class_name)
    kwargs = {"image_shape": (line.input_size, line.input_size, 3)} if line.resizable else {}
    try:
        return constructor.from_preset(preset, **kwargs)
    except Exception as error:
        raise WeightsUnavailableError(
            f"cannot load {spec.weights} into {spec.model} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def _with_image_size(architecture: Architecture, size: int) -> Architecture:
    return Architecture(
        architecture.class_name, {**architecture.args, "image_shape": (size, size, 3)}
    )


def preset_location(spec: ModelSpec) -> str:
    """What from_preset reads: a local copy of a preset folder, the image's baked copy of
    the published preset, or its handle (keras-hub downloads it into its cache)."""
    if spec.from_file:
        return local_preset_copy(spec.weights)
    return baked_preset(spec.model) or spec.backbone.preset


def local_preset_copy(folder: str) -> str:
    """A local folder with the files of a preset folder on any Beam filesystem.

    keras-hub would read gs:// through TensorFlow's own file system; Beam's FileSystems is
    what every other path of the pipeline goes through, with its credentials and retries.
    The copy is shared by the worker processes of a VM (one per vCPU): each finds the one
    made for the same files (path, size, time) instead of downloading them again. An
    object whose name would leave the copy is refused before anything is written.
    """
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(folder) in (None, "file"):
        return os.path.abspath(folder)  # keras-hub takes a bare name for a Kaggle preset
    files = remote_preset_files(folder)
    made = hashlib.sha256(
        "\n".join(
            f"{m.path} {m.size_in_bytes} {m.last_updated_in_seconds}" for m, _ in files
        ).encode()
    ).hexdigest()[:20]
    local = os.path.join(tempfile.gettempdir(), "presets", made)
    if os.path.isfile(os.path.join(local, PRESET_CONFIG)):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f"{made}-", dir=os.path.dirname(local))
    for metadata, name in files:
        target = path_inside(partial, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        copy_file(metadata.path, target)
    if not os.path.isfile(os.path.join(partial, PRESET_CONFIG)):
        shutil.rmtree(partial, ignore_errors=True)
        raise WeightsUnavailableError(f"--weights {folder}: no {PRESET_CONFIG} in the folder")
    try:
        os.rename(partial, local)  # whole or not at all; another process may have won
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return local


def _vision_embeddings(backbone: Any, images: Any) -> Any:
    return backbone.get_vision_embeddings(images)


def _cls_token(backbone: Any, images: Any) -> Any:
    return backbone({"images": images})[:, 0]


# What one embedding is, by the table's `embedding`.
EMBEDDINGS = {"vision_embeddings": _vision_embeddings, "cls_token": _cls_token}


def embedding_model(spec: ModelSpec) -> keras.Model:
    """uint8 RGB images, already resized by the load step, in; embeddings out, the
    model's normalisation and (for CLIP and SigLIP) L2 normalisation included."""
    backbone = load_backbone(spec)  # before Keras: see load_backbone
    import keras
    import numpy as np

    line = spec.backbone
    size = line.input_size
    images = keras.Input((size, size, 3), dtype="uint8", name="images")
    mean = np.asarray(line.mean, dtype="float32")
    std = np.asarray(line.std, dtype="float32")
    pixels = (keras.ops.cast(images, "float32") / 255.0 - mean) / std
    embeddings = EMBEDDINGS[line.embedding](backbone, pixels)
    if line.normalised:
        embeddings = keras.ops.normalize(embeddings, axis=-1, order=2)
    if not spec.pretrained:
        # The launch warns once (plan.py); each worker's model says it in its own log.
        _LOG.info("model %s uses %s", spec.model, spec.describe_weights())
    return keras.Model(images, embeddings, name=f"{spec.model}_embedding")


def load_tokenizer(spec: ModelSpec) -> Any:
    """The text tower's tokenizer, from the same preset as the weights."""
    import keras_hub

    line = spec.backbone
    if not line.text_tower:
        raise ValueError(f"{spec.model} has no text tower")
    if spec.weights == "random":
        raise WeightsUnavailableError(
            f"--weights random builds no tokenizer for {spec.model}: its vocabulary comes "
            "with a preset"
        )
    return getattr(keras_hub.models, line.tokenizer).from_preset(preset_location(spec))
