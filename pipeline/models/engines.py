"""What runs the embedding function on a worker: TensorFlow, or OpenVINO on the CPU in
float32 or bfloat16, chosen once per worker process from --engine and --precision.

The launcher only names the choices (ENGINES, PRECISIONS); TensorFlow and OpenVINO are
imported on the workers.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

_LOG = logging.getLogger(__name__)

AUTO = "auto"
TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
ENGINES = (AUTO, TENSORFLOW, OPENVINO)
PRECISIONS = (AUTO, FLOAT32, BFLOAT16)

# OpenVINO's names for the precisions (INFERENCE_PRECISION_HINT).
_OPENVINO_PRECISION = {FLOAT32: "f32", BFLOAT16: "bf16"}


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
    fallback: str = ""  # why auto runs TensorFlow where it chose OpenVINO

    @property
    def counter(self) -> str:
        """The Beam counter that counts worker processes running this engine."""
        return f"engine_{self.engine}_{self.precision}"


def gpu_visible() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively (AVX512_BF16 or AMX): the
    plugin's own OPTIMIZATION_CAPABILITIES, which is what compile_model acts on."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose(engine: str, precision: str) -> Resolved:
    """The engine and precision this worker runs for --engine and --precision.

    auto: TensorFlow where a GPU is visible, otherwise OpenVINO on the CPU; its precision
    auto: bfloat16 where the CPU computes it natively, float32 elsewhere. bfloat16 asked for
    runs on OpenVINO (parsing refuses it with --engine tensorflow).
    """
    if engine == AUTO:
        engine = OPENVINO if precision == BFLOAT16 or not gpu_visible() else TENSORFLOW
    if precision == AUTO:
        precision = BFLOAT16 if engine == OPENVINO and cpu_has_bf16() else FLOAT32
    if engine == OPENVINO and precision == BFLOAT16 and not cpu_has_bf16():
        raise EngineUnavailableError(
            "--precision bfloat16: this worker's CPU does not compute bfloat16 (OpenVINO's "
            "OPTIMIZATION_CAPABILITIES lacks BF16; it needs AVX512_BF16 or AMX); use "
            "--precision auto or float32"
        )
    return Resolved(engine, precision)


class TensorFlowEmbedder:
    """The Keras function run by TensorFlow (float32)."""

    engine = TENSORFLOW
    precision = FLOAT32

    def __init__(self, function: EmbeddingFunction):
        self._function = function

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._function(images)


class OpenVinoEmbedder:
    """The same Keras function converted by OpenVINO and compiled for the CPU.

    Compiled with the THROUGHPUT hint, OpenVINO runs several streams on the CPU's cores;
    each batch is split into one part per stream and the parts inferred at once (faster
    than one request for the whole batch: docs/engine.md). Each thread that calls it has
    its own requests: an InferRequest serves one inference at a time.

    threads: how many of the machine's cores this process may use (0: all of them). Where
    one worker process runs per core, each compiles for one thread, so the processes do
    not contend for the cores (docs/performance.md, "Processes and threads").
    """

    engine = OPENVINO

    def __init__(self, function: EmbeddingFunction, precision: str, threads: int = 0):
        import openvino as ov

        self.precision = precision
        model = ov.convert_model(function.concrete_function())
        config = {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self.threads = int(self._compiled.get_property("INFERENCE_NUM_THREADS"))
        self._parallel = max(
            1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        )
        self._local = threading.local()

    def _requests(self) -> list:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = [self._compiled.create_infer_request() for _ in range(self._parallel)]
            self._local.requests = requests
        return requests

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images)
        requests = self._requests()
        parts = np.array_split(images, min(len(requests), len(images)))
        for request, part in zip(requests, parts, strict=False):
            request.start_async({0: part})
        outputs = []
        for request, _part in zip(requests, parts, strict=False):
            request.wait()
            # A copy: the request's output tensor is overwritten by its next inference.
            outputs.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
        return np.concatenate(outputs)


def probe(embedder: Embedder, size: int) -> None:
    """Embeds one black image: an engine that cannot run fails here, before any image."""
    embedding = embedder(np.zeros((1, size, size, 3), np.uint8))
    if embedding.shape[0] != 1 or not np.all(np.isfinite(embedding)):
        raise EngineUnavailableError(
            f"{embedder.engine} {embedder.precision} gave {embedding.shape[0]} embeddings "
            "for one image, or values that are not finite"
        )


def _reason(error: Exception) -> str:
    """An error in one line; for OpenVINO's conversion report, its summary line (the
    operations it has no rule for) rather than the source line that raised."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    summary = [line.lstrip("- ") for line in lines if line.startswith("-- ")]
    return f"{type(error).__name__}: {(summary or lines or [''])[0]}"


def make_embedder(
    function: EmbeddingFunction, model: str, engine: str, precision: str, threads: int = 0
) -> tuple[Embedder, Resolved]:
    """The embedder this worker process runs, and what was chosen (with auto's fallback);
    threads as OpenVinoEmbedder takes them.

    An explicit --engine openvino that cannot convert or run the model raises
    EngineUnavailableError naming the model; under auto, TensorFlow takes over and the
    reason is logged and returned.
    """
    try:
        chosen = choose(engine, precision)
    except EngineUnavailableError as error:
        raise EngineUnavailableError(f"{model}: {error}") from error
    if chosen.engine == TENSORFLOW:
        return TensorFlowEmbedder(function), chosen
    try:
        embedder = OpenVinoEmbedder(function, chosen.precision, threads)
        probe(embedder, function.size)
    except Exception as error:
        reason = _reason(error)
        if engine == OPENVINO or precision == BFLOAT16:
            raise EngineUnavailableError(
                f"--engine {engine} --precision {precision}: OpenVINO cannot run {model} in "
                f"{chosen.precision} ({reason})"
            ) from error
        _LOG.warning(
            "--engine auto: OpenVINO cannot run %s (%s); embedding with TensorFlow", model, reason
        )
        return TensorFlowEmbedder(function), Resolved(TENSORFLOW, FLOAT32, reason)
    return embedder, chosen
