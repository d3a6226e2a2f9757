"""The embedder interface every engine implements: the engine and precision names, the
Keras function an engine takes (EmbeddingFunction), the Embedder it makes, and Resolved,
what a worker process runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

AUTO = "auto"
TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
INT8 = "int8"
FLOAT16 = "float16"  # what auto resolves to on a GPU; not a --precision value
ENGINES = (AUTO, TENSORFLOW, OPENVINO)
PRECISIONS = (AUTO, FLOAT32, BFLOAT16, INT8)


class EngineUnavailableError(RuntimeError):
    """The engine asked for cannot embed with this model on this worker."""


class EmbeddingFunction(Protocol):
    """The Keras embedding model as one TensorFlow function (handler.EmbeddingFunction)."""

    size: int  # of the square uint8 images it takes

    def concrete_function(self) -> Any: ...

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class Embedder(Protocol):
    """uint8 (n, size, size, 3) images to (n, ...) float32 embeddings."""

    engine: str
    precision: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Resolved:
    """The engine and precision a worker process runs, and why auto left its first choice."""

    engine: str
    precision: str
    fallback: str = ""  # why auto runs TensorFlow float32 where it chose otherwise

    @property
    def counter(self) -> str:
        """The Beam counter that counts worker processes running this engine."""
        return f"engine_{self.engine}_{self.precision}"
