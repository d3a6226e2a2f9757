"""The OpenVINO engine: the Keras function converted by OpenVINO and compiled for the CPU,
in float32, bfloat16 or int8."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.models.embedder import (
    BFLOAT16,
    FLOAT32,
    INT8,
    OPENVINO,
    EmbeddingFunction,
    EngineUnavailableError,
)
from pipeline.models.quantisation import quantize

# OpenVINO's names for the precisions (INFERENCE_PRECISION_HINT). int8 runs its quantised
# operations in int8 and the rest in f32: with bf16 there too, CLIP's recall@10 against
# float32 fell from 0.959 to 0.941 (docs/engine.md).
_OPENVINO_PRECISION = {FLOAT32: "f32", BFLOAT16: "bf16", INT8: "f32"}

# One conversion at a time: _variables_read_once swaps a class attribute of OpenVINO's.
_CONVERTING = threading.Lock()


def convert(function: EmbeddingFunction) -> Any:
    """The traced Keras function as an OpenVINO model (ov.convert_model), with no usage
    telemetry sent and each of its variables read once: the same model, 2 to 3 s sooner
    on 2 cores (docs/performance.md, "Start-up")."""
    import openvino as ov

    with _CONVERTING, _variables_read_once():
        _decline_telemetry()
        return ov.convert_model(function.concrete_function())


def _decline_telemetry() -> None:
    """Turns off the usage events convert_model sends unless ~/intel/openvino_telemetry
    says no: it posts each of about 30 from a fork of this process (a gigabyte with
    TensorFlow), 1.7 s of a 13-photo run. Telemetry is a singleton: convert_model's own
    init_ovc_telemetry() finds this one, declined, unless another tool re-made it since."""
    try:
        from openvino.tools.ovc.telemetry_utils import init_ovc_telemetry
    except ImportError:
        return
    init_ovc_telemetry().consent = False


def _node_decoder() -> Any:
    """OpenVINO's TensorFlow node decoder class, where its get_variable is the static
    method this module knows; None otherwise."""
    try:
        from openvino.frontend.tensorflow.node_decoder import TFGraphNodeDecoder
    except ImportError:
        return None
    found = TFGraphNodeDecoder.__dict__.get("get_variable")
    return TFGraphNodeDecoder if isinstance(found, staticmethod) else None


@contextlib.contextmanager
def _variables_read_once() -> Iterator[None]:
    """Within the block, OpenVINO's TensorFlow frontend reads each variable once.

    Its get_variable scans the graph's captures and reads the variable's value every time
    a node's type or attributes are asked: about 11 times per variable of ResNet50, 1.2 s
    of a 2 s conversion. The values, and so the converted model, are the same.
    """
    decoder = _node_decoder()
    if decoder is None:
        yield
        return
    original = decoder.__dict__["get_variable"]
    read: dict[Any, Any] = {}  # keeps each operation, so that no id is reused meanwhile

    def get_variable(operation: Any) -> Any:
        if operation not in read:
            read[operation] = original.__func__(operation)
        return read[operation]

    decoder.get_variable = staticmethod(get_variable)
    try:
        yield
    finally:
        decoder.get_variable = original


class OpenVinoEmbedder:
    """The same Keras function converted by OpenVINO and compiled for the CPU.

    Compiled with the THROUGHPUT hint, OpenVINO runs several streams on the CPU's cores;
    each batch is split into one part per stream and the parts inferred at once (faster
    than one request for the whole batch: docs/engine.md). Each thread that calls it has
    its own requests: an InferRequest serves one inference at a time.

    int8 needs calibration: the images (uint8, as the load step gives them) whose
    activations set the quantisation ranges (quantize).
    """

    engine = OPENVINO

    def __init__(
        self,
        function: EmbeddingFunction,
        precision: str,
        calibration: np.ndarray | None = None,
        *,
        transformer: bool = False,
    ):
        import openvino as ov

        self.precision = precision
        model = convert(function)
        if precision == INT8:
            if calibration is None:
                raise EngineUnavailableError("--precision int8 needs calibration images")
            model = quantize(model, calibration, transformer=transformer)
        config = {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISION[precision],
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        self._compiled = ov.Core().compile_model(model, "CPU", config)
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
