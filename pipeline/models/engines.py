"""What runs the embedding function on a worker: TensorFlow (float32, or mixed float16 on a
GPU with tensor cores), or OpenVINO on the CPU in float32, bfloat16 or int8 (quantised by
NNCF on a calibration sample), chosen once per worker process from --engine and --precision.

The launcher only names the choices (ENGINES, PRECISIONS); TensorFlow, OpenVINO and NNCF are
imported on the workers.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

_LOG = logging.getLogger(__name__)

AUTO = "auto"
TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
INT8 = "int8"
FLOAT16 = "float16"  # what auto resolves to on a GPU; not a --precision value
ENGINES = (AUTO, TENSORFLOW, OPENVINO)
PRECISIONS = (AUTO, FLOAT32, BFLOAT16, INT8)

# Grappler's mixed-precision graph rewrites (tensorflow/core/protobuf/rewriter_config.proto).
# auto_mixed_precision turns the ops on its allow list (Conv2D, MatMul, Einsum...) and the
# ops between them to float16 and keeps those on its deny list (Softmax, Exp, Pow, Sum,
# Mean, the norms' reductions...) in float32 (core/grappler/optimizers/
# auto_mixed_precision_lists.h); it acts only where a GPU of compute capability 7.0 or more
# is visible (auto_mixed_precision.cc: HasFastFP16Support, kMinGPUArch = {7, 0}) and logs
# "No (suitable) GPUs detected" otherwise. auto_mixed_precision_cpu is the same rewrite with
# the same lists for a CPU (AutoMixedPrecisionMode::CPU, there to test it without a GPU):
# the CPU has no float16 kernels for the allow list, so those ops compute in float32
# between casts, and the values between ops are rounded to float16 as on a GPU.
MIXED_FLOAT16_GPU = "auto_mixed_precision"
MIXED_FLOAT16_CPU_EMULATION = "auto_mixed_precision_cpu"
MIN_FLOAT16_CAPABILITY = (7, 0)  # tensor cores: Volta and later

# OpenVINO's names for the precisions (INFERENCE_PRECISION_HINT). int8 runs its quantised
# operations in int8 and the rest in f32: with bf16 there too, CLIP's recall@10 against
# float32 fell from 0.959 to 0.941 (docs/engine.md).
_OPENVINO_PRECISION = {FLOAT32: "f32", BFLOAT16: "bf16", INT8: "f32"}
# Fewer calibration images than this that decode: the quantisation ranges would rest on
# too few images to trust, so --precision int8 fails instead.
MIN_CALIBRATION_IMAGES = 8


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


def gpu_details() -> list[dict]:
    """What TensorFlow reports of each visible GPU (device_name, compute_capability)."""
    import tensorflow as tf

    return [
        dict(tf.config.experimental.get_device_details(gpu))
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def fast_float16(gpus: Sequence[Mapping]) -> bool:
    """Whether grappler's auto_mixed_precision acts on these GPUs: every one reports a
    compute capability of 7.0 or more (a GPU without one, e.g. ROCm's, counts as older)."""
    return bool(gpus) and all(
        tuple(gpu.get("compute_capability") or (0, 0)) >= MIN_FLOAT16_CAPABILITY for gpu in gpus
    )


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively (AVX512_BF16 or AMX): the
    plugin's own OPTIMIZATION_CAPABILITIES, which is what compile_model acts on."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def choose(engine: str, precision: str, gpus: Sequence[Mapping] | None = None) -> Resolved:
    """The engine and precision this worker runs for --engine and --precision.

    auto: TensorFlow where a GPU is visible, otherwise OpenVINO on the CPU. Precision auto:
    on OpenVINO, bfloat16 where the CPU computes it natively; on TensorFlow, mixed float16
    where every visible GPU has tensor cores (fast_float16); float32 elsewhere. bfloat16
    and int8 asked for run on OpenVINO (parsing refuses them with --engine tensorflow); auto
    never chooses int8. gpus: the
    device details of the visible GPUs (gpu_details(), read only when needed, by default).
    """

    def visible() -> Sequence[Mapping]:
        nonlocal gpus
        if gpus is None:
            gpus = gpu_details()
        return gpus

    if engine == AUTO:
        engine = OPENVINO if precision in (BFLOAT16, INT8) or not visible() else TENSORFLOW
    if precision == AUTO:
        if engine == OPENVINO:
            precision = BFLOAT16 if cpu_has_bf16() else FLOAT32
        else:
            precision = FLOAT16 if fast_float16(visible()) else FLOAT32
    if engine == OPENVINO and precision == BFLOAT16 and not cpu_has_bf16():
        raise EngineUnavailableError(
            "--precision bfloat16: this worker's CPU does not compute bfloat16 (OpenVINO's "
            "OPTIMIZATION_CAPABILITIES lacks BF16; it needs AVX512_BF16 or AMX); use "
            "--precision auto or float32"
        )
    return Resolved(engine, precision)


@contextlib.contextmanager
def _rewritten(config: Any) -> Iterator[None]:
    """TensorFlow functions called in this block, on this thread, are optimized with
    `config` (the process's config with one grappler rewrite turned on).

    The option could be set for the whole process (tf.config.optimizer.
    set_experimental_options({"auto_mixed_precision": True})), but that would rewrite every
    function the process calls afterwards, a float32 embedder's included, and it does not
    take auto_mixed_precision_cpu (eager/context.py maps only auto_mixed_precision and the
    oneDNN bfloat16 ones). Grappler optimizes a function once per config it is called with,
    so each call here runs the rewritten graph and a call outside runs the plain one.
    """
    from tensorflow.python.eager import context

    eager = context.context()
    before = eager.function_call_options
    eager.function_call_options = context.FunctionCallOptions(
        executor_type=before.executor_type, config_proto=config
    )
    try:
        yield
    finally:
        eager.function_call_options = before


class TensorFlowEmbedder:
    """The Keras function run by TensorFlow: float32 as traced, or float16 through grappler's
    mixed-precision rewrite of the same graph (no change to the model or its weights)."""

    engine = TENSORFLOW

    def __init__(
        self,
        function: EmbeddingFunction,
        precision: str = FLOAT32,
        rewrite: str = MIXED_FLOAT16_GPU,
    ):
        self._function = function
        self.precision = precision
        self._config = None  # a ConfigProto with the rewrite on, for float16
        if precision == FLOAT16:
            from tensorflow.core.protobuf import rewriter_config_pb2
            from tensorflow.python.eager import context

            config = context.context().config
            setattr(
                config.graph_options.rewrite_options, rewrite, rewriter_config_pb2.RewriterConfig.ON
            )
            self._config = config

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._config is None:
            return self._function(images)
        with _rewritten(self._config):
            return self._function(images)


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


def quantize(model: Any, calibration: np.ndarray, *, transformer: bool = False) -> Any:
    """The OpenVINO model with NNCF's post-training int8 quantisation, its ranges set from
    the activations of the calibration images (uint8, one inference each); transformer:
    NNCF's model type for attention models (its ignored patterns for them, SmoothQuant).
    The same model and images give the same quantised model (tests/test_int8.py)."""
    import nncf
    from nncf.common.logging import nncf_logger

    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    # NNCF logs and draws its progress bars on stdout, where the command lines print their
    # results (a run's summary, a search's --json rows): both go to stderr instead.
    for handler in nncf_logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(model, dataset, subset_size=len(calibration), **kwargs)


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


def _float16_embedder(
    function: EmbeddingFunction, model: str, chosen: Resolved, rewrite: str
) -> tuple[Embedder, Resolved]:
    """Mixed float16, tried on one black image; where it cannot run or gives values that
    are not finite (float16 ends at 65504), TensorFlow float32, with the reason logged."""
    try:
        embedder = TensorFlowEmbedder(function, FLOAT16, rewrite)
        probe(embedder, function.size)
    except Exception as error:
        reason = _reason(error)
        _LOG.warning(
            "--precision auto: %s in mixed float16 failed (%s); embedding in float32",
            model,
            reason,
        )
        return TensorFlowEmbedder(function), Resolved(TENSORFLOW, FLOAT32, reason)
    return embedder, chosen


def make_embedder(
    function: EmbeddingFunction,
    model: str,
    engine: str,
    precision: str,
    *,
    gpus: Sequence[Mapping] | None = None,
    float16_rewrite: str = MIXED_FLOAT16_GPU,
    calibration: np.ndarray | None = None,
    transformer: bool = False,
) -> tuple[Embedder, Resolved]:
    """The embedder this worker process runs, and what was chosen (with auto's fallback).

    An explicit --engine openvino that cannot convert or run the model raises
    EngineUnavailableError naming the model; under auto, TensorFlow takes over and the
    reason is logged and returned. Mixed float16 (auto on a GPU) that fails its probe falls
    back to TensorFlow float32 the same way. gpus and float16_rewrite are choose()'s device
    details and the grappler rewrite float16 runs with (MIXED_FLOAT16_CPU_EMULATION to
    exercise it on a CPU). calibration: int8's calibration images (CalibrationSample.load);
    transformer: quantise with NNCF's model type for attention models.
    """
    try:
        chosen = choose(engine, precision, gpus)
    except EngineUnavailableError as error:
        raise EngineUnavailableError(f"{model}: {error}") from error
    if chosen.engine == TENSORFLOW:
        if chosen.precision == FLOAT16:
            return _float16_embedder(function, model, chosen, float16_rewrite)
        return TensorFlowEmbedder(function), chosen
    if chosen.precision == INT8 and calibration is None:
        raise EngineUnavailableError(f"{model}: --precision int8 needs calibration images")
    try:
        embedder = OpenVinoEmbedder(
            function, chosen.precision, calibration, transformer=transformer
        )
        probe(embedder, function.size)
    except Exception as error:
        reason = _reason(error)
        if engine == OPENVINO or precision in (BFLOAT16, INT8):
            raise EngineUnavailableError(
                f"--engine {engine} --precision {precision}: OpenVINO cannot run {model} in "
                f"{chosen.precision} ({reason})"
            ) from error
        _LOG.warning(
            "--engine auto: OpenVINO cannot run %s (%s); embedding with TensorFlow", model, reason
        )
        return TensorFlowEmbedder(function), Resolved(TENSORFLOW, FLOAT32, reason)
    return embedder, chosen
