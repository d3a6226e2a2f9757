"""Weights without a model: a file's HDF5 layout, and the ImageNet files in Keras's cache.

The launching process checks weights here so that it never imports TensorFlow or
builds a model (a Flex Template launcher VM is small, and a slow launch times out);
the workers load the same files with Keras.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipeline.common import UnsafeNameError, plain_parts

_LOG = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """The requested weights cannot be obtained; the run must not start."""


@dataclass(frozen=True)
class Layout:
    """What a weights file holds, independent of layer names: its arrays' shapes."""

    arrays: int
    values: int
    digest: str  # SHA-256 of the sorted shapes, one "d1xd2x..." per line

    @classmethod
    def of_shapes(cls, shapes: list[tuple[int, ...]]) -> Layout:
        lines = sorted("x".join(str(d) for d in shape) for shape in shapes)
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return cls(len(shapes), sum(math.prod(shape) for shape in shapes), digest)

    def describe(self) -> str:
        return f"{self.arrays} arrays of {self.values:,} values"


def _weight_shapes(h5) -> list[tuple[int, ...]]:
    """Shapes of the weight arrays in an open h5py.File, in either Keras format."""
    import h5py

    if "layer_names" not in h5.attrs and "model_weights" in h5:
        h5 = h5["model_weights"]  # a whole model saved in the legacy format
    if "layer_names" in h5.attrs:
        # Legacy .h5 (keras.applications' own ImageNet files): layers list their arrays.
        shapes = []
        for layer in h5.attrs["layer_names"]:
            group = h5[_text(layer)]
            for name in group.attrs.get("weight_names", []):
                shapes.append(tuple(group[_text(name)].shape))
        return shapes
    # Keras 3 .weights.h5: one dataset per variable, under layers/<name>/vars/<i>.
    shapes = []
    h5.visititems(
        lambda name, item: (
            shapes.append(tuple(item.shape))
            if isinstance(item, h5py.Dataset) and not name.startswith("optimizer")
            else None
        )
    )
    return shapes


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def local_copy(path: str) -> str:
    """A local file with the contents of path (local or any Beam filesystem).

    Keras reads weights by file name, so the suffix (.weights.h5 / .h5) survives.
    """
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(path) in (None, "file"):
        return path
    name = path.rstrip("/").rsplit("/", 1)[-1]
    try:
        parts = plain_parts(name)
    except UnsafeNameError as error:
        raise WeightsUnavailableError(
            f"--weights {path}: its last segment {error.segment!r} is no file name; give the "
            "path of a weights file"
        ) from error
    local = os.path.join(tempfile.mkdtemp(prefix="weights-"), *parts)
    copy_file(path, local)
    return local


def copy_file(path: str, local: str) -> None:
    """The bytes of path (any Beam filesystem) into the local file, 16 MiB at a time."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with (
        FileSystems.open(
            path,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        ) as source,
        open(local, "wb") as copy,
    ):
        shutil.copyfileobj(source, copy, length=16 << 20)


def read_layout(path: str) -> Layout:
    """The layout of a Keras weights file, local or on any Beam filesystem.

    A remote file is copied first: h5py's many small seeks and reads, each a request
    to Cloud Storage, took 30 times longer than the whole download (docs/models.md, "Weights").
    """
    import h5py

    local = local_copy(path)
    try:
        with h5py.File(local, "r") as h5:
            return Layout.of_shapes(_weight_shapes(h5))
    finally:
        if local != path:
            shutil.rmtree(os.path.dirname(local), ignore_errors=True)


def check_weights_file(path: str, model: str, expected: Layout) -> None:
    """Raises WeightsUnavailableError unless path holds the weights of `model` (no top)."""
    try:
        found = read_layout(path)
    except Exception as error:
        raise WeightsUnavailableError(
            f"cannot read --weights {path} ({type(error).__name__}: {error}); give a Keras "
            "weights file (.weights.h5 or .h5) saved from the same model with "
            "include_top=False, or use imagenet or random"
        ) from error
    if found.digest != expected.digest:
        raise WeightsUnavailableError(
            f"--weights {path} does not fit {model}: the file has {found.describe()}, "
            f"{model} without its top has {expected.describe()}; give a weights file saved "
            "from the same model with include_top=False, or use imagenet or random"
        )


@dataclass(frozen=True)
class ImagenetWeights:
    """A keras.applications ImageNet weights file: where Keras downloads it from, its md5."""

    origin: str  # the folder URL
    file_name: str
    md5: str

    @property
    def url(self) -> str:
        return self.origin + self.file_name


def keras_cache_directory() -> str:
    """Where keras.applications caches weights, by Keras's own rule (backend/config.py,
    utils/file_utils.py): KERAS_HOME, else ~/.keras (/tmp/.keras where ~ or it cannot be
    written), then its models/ folder.
    """
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        user = os.path.expanduser("~")
        home = os.path.join(user if os.access(user, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    with contextlib.suppress(OSError):
        os.makedirs(home, exist_ok=True)  # as importing Keras does
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def cached_imagenet_path(weights: ImagenetWeights) -> str:
    return os.path.join(keras_cache_directory(), weights.file_name)


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_imagenet(model: str, weights: ImagenetWeights) -> str:
    """The cached ImageNet file, downloaded once if missing, as keras.utils.get_file would.

    Done in the launching process of a local run, so that its workers find the file in
    the cache instead of each downloading it.
    """
    path = cached_imagenet_path(weights)
    if os.path.exists(path) and _md5(path) == weights.md5:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _LOG.info("downloading the ImageNet weights of %s from %s", model, weights.url)
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
    os.close(handle)
    try:
        urllib.request.urlretrieve(weights.url, partial)
        if _md5(partial) != weights.md5:
            raise ValueError(f"the download's md5 is not {weights.md5}")
        os.replace(partial, path)
    except Exception as error:
        raise WeightsUnavailableError(
            f"cannot download the ImageNet weights for {model} ({type(error).__name__}: "
            f"{error}); use --weights PATH for a weights file you have (local or gs://), "
            "or --weights random for an offline smoke run"
        ) from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    return path


# Where the container image keeps the presets baked into it (Dockerfile, PRESETS): one
# folder per model, named as the model.
BAKED_PRESETS = "PIPELINE_PRESETS"
PRESET_CONFIG = "config.json"
PRESET_WEIGHTS = ("model.weights.h5", "model.weights.json")  # one file, or a sharded index


def baked_preset(model: str) -> str | None:
    """The image's own copy of model's pretrained preset, if the image has one."""
    root = os.environ.get(BAKED_PRESETS)
    folder = os.path.join(root, model) if root else None
    return folder if folder and os.path.isfile(os.path.join(folder, PRESET_CONFIG)) else None


def remote_preset_files(folder: str) -> list[tuple[Any, str]]:
    """Each file of a preset folder on a remote Beam filesystem (gs://): its metadata and
    its name inside the folder, in path order. Every name is checked before any is used:
    WeightsUnavailableError names an object whose copy would land outside the folder's."""
    from apache_beam.io.filesystems import FileSystems

    root = folder.rstrip("/")
    try:
        matched = FileSystems.match([f"{root}/**"])[0].metadata_list
    except Exception as error:
        raise WeightsUnavailableError(
            f"--weights {root}: cannot list the folder ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})"
        ) from error
    files = []
    for metadata in sorted(matched, key=lambda m: m.path):
        name = metadata.path[len(root) + 1 :]
        if (not name or name.endswith("/")) and metadata.size_in_bytes == 0:
            continue  # a folder placeholder (the Cloud Console's "Create folder"): no file
        try:
            plain_parts(name)
        except UnsafeNameError as error:
            raise WeightsUnavailableError(
                f"--weights {root}: refusing the object {metadata.path!r}, whose segment "
                f"{error.segment!r} is no plain file name, so its copy could land outside "
                "the folder's; rename or remove it"
            ) from error
        files.append((metadata, name))
    return files


def read_preset_config(folder: str) -> dict:
    """A keras-hub preset folder's config.json (local or any Beam filesystem), checked to
    sit beside its weights, and a remote folder's object names checked for a local copy;
    raises WeightsUnavailableError."""
    from apache_beam.io.filesystems import FileSystems

    folder = folder.rstrip("/")
    config_path = f"{folder}/{PRESET_CONFIG}"
    try:
        with FileSystems.open(config_path) as handle:
            config = json.loads(handle.read())
    except Exception as error:
        raise WeightsUnavailableError(
            f"--weights {folder}: no readable {PRESET_CONFIG} ({type(error).__name__}: {error}); "
            "give a folder keras-hub's save_to_preset wrote"
        ) from error
    weights = [f"{folder}/{name}" for name in PRESET_WEIGHTS]
    if not any(FileSystems.exists(path) for path in weights):
        raise WeightsUnavailableError(
            f"--weights {folder}: no {' or '.join(PRESET_WEIGHTS)} beside its {PRESET_CONFIG}; "
            "give a folder keras-hub's save_to_preset wrote"
        )
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise WeightsUnavailableError(
            f"--weights {folder}: {PRESET_CONFIG} is not a keras-hub backbone config"
        )
    if FileSystems.get_scheme(folder) not in (None, "file"):
        remote_preset_files(folder)  # what the workers' copy would refuse, refused at launch
    return config


def config_value(config: dict, path: str):
    """The constructor argument at a dotted path of a saved keras-hub config, where each
    nested layer is {"class_name": ..., "config": {...}}."""
    value = config
    for name in path.split("."):
        value = value["config"][name]
    return value


def preset_embedding_size(folder: str, backbone) -> int:
    """The embedding size of a preset folder's backbone, from its config alone."""
    return int(config_value(_preset_config(folder), backbone.embedding_size_at))


@functools.lru_cache(maxsize=8)
def _preset_config(folder: str) -> dict:
    return read_preset_config(folder)


def check_preset_folder(folder: str, model: str, backbone) -> None:
    """Raises WeightsUnavailableError unless folder holds a preset of model's architecture:
    the same backbone class, and the same patch and image size (so that the load step's
    resize fits it); depth and width may differ."""
    config = _preset_config(folder)
    found = config.get("class_name")
    if found != backbone.class_name:
        raise WeightsUnavailableError(
            f"--weights {folder} holds a {found}, not the {backbone.class_name} of {model}"
        )
    for path in backbone.fixed:
        expected = backbone.architecture.get(path)
        try:
            value = config_value(config, path)
        except (KeyError, TypeError):
            value = None
        if _plain(value) != _plain(expected):
            raise WeightsUnavailableError(
                f"--weights {folder} does not fit {model}: its {path} is {value}, "
                f"{model}'s is {_plain(expected)}"
            )


def _plain(value):
    """Lists and tuples alike, as JSON gives them back."""
    return list(value) if isinstance(value, (list, tuple)) else value
