"""Score heads (--score_head NAME=PATH): a stack of dense layers, read from a safetensors
file that holds only data, that turns each image's embedding into one score (an aesthetic
or NSFW score, say).

The file's tensors are `layers.0.weight` (out x in, as PyTorch's Linear stores it),
`layers.0.bias`, `layers.1.weight`, ...; its metadata holds `activations` (a JSON list,
one per layer), `normalize` (`true`: the embedding is L2-normalised first) and `model`
(the model the head was trained on). docs/scores.md says how to make one.

A head is applied in numpy, float32, to the embedding as stored: a score is then a
function of the stored embedding alone, which anyone can recompute, whatever engine or
precision made it.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass

import numpy as np
from apache_beam.io.filesystems import FileSystems
from scipy.special import erf

ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "none")
# A head's name is a column of every output (BigQuery's rules, in lower case).
HEAD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,127}")
_LAYER_TENSOR = re.compile(r"layers\.(\d+)\.(weight|bias)")
# safetensors: an 8-byte little-endian header length, then the JSON header.
_HEADER_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
MAX_HEAD_BYTES = 1 << 30


class HeadError(ValueError):
    """A score head that cannot be read, or that does not fit the run's model."""


@dataclass(frozen=True)
class HeadSpec:
    """A --score_head as given: the output column's name and the file's path."""

    name: str
    path: str


@dataclass(frozen=True)
class Layer:
    weight: np.ndarray  # (out, in) float32
    bias: np.ndarray  # (out,) float32
    activation: str


@dataclass(frozen=True)
class ScoreHead:
    """A head read from its file: its layers, whether it normalises its input, the model
    it was trained for, and the file's sha256 (what a run records of it)."""

    name: str
    path: str
    layers: tuple[Layer, ...]
    normalize: bool
    model: str
    digest: str

    @property
    def input_size(self) -> int:
        return int(self.layers[0].weight.shape[1])

    def check_fits(self, model: str, embedding_shape: tuple[int, ...]) -> None:
        """HeadError unless the head was made for model and takes its embeddings."""
        if self.model != model:
            raise HeadError(
                f"--score_head {self.name}: {self.path} was made for --model {self.model}, "
                f"this run embeds with {model}"
            )
        size = int(np.prod(embedding_shape))
        if self.input_size != size:
            raise HeadError(
                f"--score_head {self.name}: {self.path} takes embeddings of {self.input_size} "
                f"values, --model {model} makes {size}"
            )

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, d) embeddings to (n,) float32 scores."""
        values = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)
        if self.normalize:
            norms = np.linalg.norm(values, axis=1, keepdims=True)
            values = values / np.maximum(norms, np.float32(1e-12))
        for layer in self.layers:
            values = _activate(values @ layer.weight.T + layer.bias, layer.activation)
        return values[:, 0].astype(np.float32)


def _activate(values: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(values, 0)
    if activation == "gelu":  # PyTorch's nn.GELU(): the exact form, with erf
        return (0.5 * values * (1 + erf(values / np.sqrt(2)))).astype(np.float32)
    if activation == "sigmoid":
        return (1 / (1 + np.exp(-values))).astype(np.float32)
    if activation == "tanh":
        return np.tanh(values)
    return values


def parse_heads(value: str) -> tuple[HeadSpec, ...]:
    """--score_head (NAME=PATH, several comma-separated; the flag given again adds its
    value so) to HeadSpecs; HeadError for a malformed one, a name that cannot be a
    column, or a name given twice."""
    if not value:
        return ()
    heads: list[HeadSpec] = []
    for given in (part.strip() for part in value.split(",")):
        name, equals, path = given.partition("=")
        name, path = name.strip(), path.strip()
        if not equals or not name or not path:
            raise HeadError(
                f"--score_head {given!r}: give NAME=PATH, such as aesthetic=head.safetensors"
            )
        if not HEAD_NAME.fullmatch(name):
            raise HeadError(
                f"--score_head {name!r}: a head's name is its output column: lower-case "
                "letters, digits and _, not starting with a digit"
            )
        if any(head.name == name for head in heads):
            raise HeadError(f"--score_head names {name!r} twice")
        heads.append(HeadSpec(name, path))
    return tuple(heads)


def read_head(spec: HeadSpec) -> ScoreHead:
    """The head in spec.path (local or any Beam filesystem); HeadError, naming the head,
    for a file that is not safetensors, or whose tensors or metadata are not a head's.
    The file is parsed as data only: its header as JSON, its tensors by safetensors."""
    try:
        with FileSystems.open(spec.path) as handle:
            data = handle.read(MAX_HEAD_BYTES + 1)
    except Exception as error:
        raise HeadError(f"--score_head {spec.name}: cannot read {spec.path} ({error})") from None
    if len(data) > MAX_HEAD_BYTES:
        raise HeadError(f"--score_head {spec.name}: {spec.path} is over {MAX_HEAD_BYTES} bytes")
    return head_from_bytes(spec, data)


def head_from_bytes(spec: HeadSpec, data: bytes) -> ScoreHead:
    refuse = _refusal(spec)
    metadata = _safetensors_metadata(data, refuse)
    try:
        from safetensors.numpy import load

        tensors = load(data)
    except Exception as error:
        raise refuse(f"is not a safetensors file ({error})") from None
    weights, biases = _layer_tensors(tensors, refuse)
    activations = _activations(metadata, len(weights), refuse)
    layers = []
    for index, (weight, activation) in enumerate(zip(weights, activations, strict=True)):
        if weight.ndim != 2:
            raise refuse(f"layers.{index}.weight has shape {weight.shape}, not (out, in)")
        bias = biases.get(index, np.zeros(weight.shape[0], np.float32))
        if bias.shape != (weight.shape[0],):
            raise refuse(f"layers.{index}.bias has shape {bias.shape}, not ({weight.shape[0]},)")
        if index and weight.shape[1] != layers[-1].weight.shape[0]:
            raise refuse(
                f"layers.{index}.weight takes {weight.shape[1]} values, layers.{index - 1} "
                f"gives {layers[-1].weight.shape[0]}"
            )
        layers.append(Layer(weight.astype(np.float32), bias.astype(np.float32), activation))
    if layers[-1].weight.shape[0] != 1:
        raise refuse(f"its last layer gives {layers[-1].weight.shape[0]} values, not one score")
    normalize = metadata.get("normalize", "false").strip().lower()
    if normalize not in ("true", "false"):
        raise refuse(f"its metadata's normalize is {normalize!r}, not true or false")
    model = metadata.get("model", "").strip()
    if not model:
        raise refuse("its metadata names no model (the model the head was trained on)")
    digest = hashlib.sha256(data).hexdigest()
    return ScoreHead(spec.name, spec.path, tuple(layers), normalize == "true", model, digest)


def _refusal(spec: HeadSpec):
    def refuse(why: str) -> HeadError:
        return HeadError(f"--score_head {spec.name}: {spec.path} {why}")

    return refuse


def _safetensors_metadata(data: bytes, refuse) -> dict[str, str]:
    """The header's __metadata__, read as JSON: no pickle, nothing executed."""
    if len(data) < _HEADER_LENGTH.size:
        raise refuse("is not a safetensors file (too short)")
    (length,) = _HEADER_LENGTH.unpack_from(data)
    if length > min(_MAX_HEADER_BYTES, len(data) - _HEADER_LENGTH.size):
        raise refuse("is not a safetensors file (no header; a PyTorch .pt or .pth file?)")
    try:
        header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise refuse("is not a safetensors file (its header is not JSON)") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise refuse("is not a safetensors file (its header is not a JSON object)")
    return {str(key): str(value) for key, value in metadata.items()}


def _layer_tensors(tensors: dict[str, np.ndarray], refuse):
    weights: dict[int, np.ndarray] = {}
    biases: dict[int, np.ndarray] = {}
    for key, tensor in tensors.items():
        found = _LAYER_TENSOR.fullmatch(key)
        if not found:
            raise refuse(f"holds the tensor {key!r}; a head holds only layers.N.weight and .bias")
        if not np.issubdtype(tensor.dtype, np.floating):
            raise refuse(f"holds {key} as {tensor.dtype}, not floating point")
        (weights if found.group(2) == "weight" else biases)[int(found.group(1))] = tensor
    if not weights or sorted(weights) != list(range(len(weights))):
        raise refuse(f"has the layers {sorted(weights)}; a head has layers.0 to layers.N")
    stray = sorted(set(biases) - set(weights))
    if stray:
        raise refuse(f"has layers.{stray[0]}.bias without layers.{stray[0]}.weight")
    return [weights[index] for index in range(len(weights))], biases


def _activations(metadata: dict[str, str], count: int, refuse) -> list[str]:
    try:
        activations = json.loads(metadata.get("activations", ""))
    except json.JSONDecodeError:
        raise refuse("has no activations in its metadata (a JSON list, one per layer)") from None
    if not isinstance(activations, list) or len(activations) != count:
        raise refuse(f"has activations {activations!r} in its metadata, for {count} layers")
    unknown = [name for name in activations if name not in ACTIVATIONS]
    if unknown:
        raise refuse(f"has the activation {unknown[0]!r}; one of {', '.join(ACTIVATIONS)}")
    return activations


def recorded_heads(heads: tuple[ScoreHead, ...]) -> str:
    """What a run records of its heads: NAME=sha256, in the order given."""
    return ",".join(f"{head.name}={head.digest}" for head in heads)


@dataclass(frozen=True)
class HeadReference:
    """What a worker needs to read a head the launch checked: where it is, and its sha256,
    so that a file changed since the launch fails the workers rather than scoring with
    another head."""

    name: str
    path: str
    digest: str

    def read(self) -> ScoreHead:
        head = read_head(HeadSpec(self.name, self.path))
        if head.digest != self.digest:
            raise HeadError(
                f"--score_head {self.name}: {self.path} changed after the run started "
                f"(sha256 {head.digest[:12]}..., was {self.digest[:12]}...)"
            )
        return head


def reference(head: ScoreHead) -> HeadReference:
    return HeadReference(head.name, head.path, head.digest)
