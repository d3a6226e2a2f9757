"""The OpenVINO engine: the Keras function converted by OpenVINO and compiled for the CPU,
in float32, bfloat16 or int8."""

from __future__ import annotations

import threading

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
        model = ov.convert_model(function.concrete_function())
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
