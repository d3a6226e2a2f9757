"""The engine choice: which engine and precision run the embedding function on a worker,
chosen once per worker process from --engine and --precision, and auto's fallback to
TensorFlow float32.

TensorFlow runs float32, or mixed float16 on a GPU with tensor cores (tensorflow_engine);
OpenVINO runs on the CPU in float32, bfloat16 or int8 (openvino_engine), int8 quantised by
NNCF on a calibration sample (quantisation). The launcher only names the choices (ENGINES,
PRECISIONS, from embedder); TensorFlow, OpenVINO and NNCF are imported on the workers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.models.embedder import (
    AUTO,
    BFLOAT16,
    ENGINES,
    FLOAT16,
    FLOAT32,
    INT8,
    OPENVINO,
    PRECISIONS,
    TENSORFLOW,
    Embedder,
    EmbeddingFunction,
    EngineUnavailableError,
    Resolved,
)
from pipeline.models.openvino_engine import OpenVinoEmbedder
from pipeline.models.quantisation import MIN_CALIBRATION_IMAGES, quantize
from pipeline.models.tensorflow_engine import (
    MIXED_FLOAT16_CPU_EMULATION,
    MIXED_FLOAT16_GPU,
    TensorFlowEmbedder,
)

# What the rest of the package, the benchmarks and the tests import from here: the
# interface, both engines and int8's quantisation, besides the choice itself.
__all__ = [
    "AUTO",
    "BFLOAT16",
    "ENGINES",
    "FLOAT16",
    "FLOAT32",
    "INT8",
    "MIN_CALIBRATION_IMAGES",
    "MIN_FLOAT16_CAPABILITY",
    "MIXED_FLOAT16_CPU_EMULATION",
    "MIXED_FLOAT16_GPU",
    "OPENVINO",
    "PRECISIONS",
    "TENSORFLOW",
    "CpuInfo",
    "Embedder",
    "EmbeddingFunction",
    "EngineUnavailableError",
    "OpenVinoEmbedder",
    "Resolved",
    "TensorFlowEmbedder",
    "bfloat16_is_faster",
    "choose",
    "cpu_has_bf16",
    "cpu_info",
    "fast_float16",
    "gpu_details",
    "make_embedder",
    "parse_cpuinfo",
    "probe",
    "quantize",
]

_LOG = logging.getLogger(__name__)

# Where grappler's auto_mixed_precision acts (tensorflow_engine.MIXED_FLOAT16_GPU):
# auto_mixed_precision.cc's kMinGPUArch = {7, 0}.
MIN_FLOAT16_CAPABILITY = (7, 0)  # tensor cores: Volta and later
AMD = "AuthenticAMD"  # /proc/cpuinfo's vendor_id


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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bfloat16 natively (AVX512_BF16 or AMX): the
    plugin's own OPTIMIZATION_CAPABILITIES, which is what compile_model acts on. Asked
    once per process (choose asks twice; each asks a new ov.Core)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class CpuInfo(NamedTuple):
    """What the kernel reports of the CPU (/proc/cpuinfo): its vendor and the features it
    lets programs use."""

    vendor: str
    flags: frozenset[str]


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's vendor_id and flags in /proc/cpuinfo's text (empty where a
    kernel names neither, as on Arm)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return CpuInfo(fields.get("vendor_id", ""), frozenset(fields.get("flags", "").split()))


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's CpuInfo; empty where there is no /proc/cpuinfo (not Linux)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return CpuInfo("", frozenset())


def bfloat16_is_faster(has_bf16: bool, cpu: CpuInfo) -> bool:
    """Whether OpenVINO bfloat16 outruns float32 on this CPU: with AMX's bfloat16 tiles
    (amx_bf16; 103.9 images/s for ResNet50 in bfloat16 on 2 cores, above float32 on any
    CPU measured), and on an AMD CPU with AVX512_BF16 (EPYC: 1.9x float32's images/s for
    ResNet50, 2.0x for CLIP ViT-B/16). Not on an Intel CPU with AVX512_BF16 and no AMX,
    where it ran at 0.58x to 0.71x float32's (docs/engine.md, "What auto decides"); nor
    where the CPU cannot be read (no /proc/cpuinfo)."""
    return has_bf16 and ("amx_bf16" in cpu.flags or cpu.vendor == AMD)


def choose(engine: str, precision: str, gpus: Sequence[Mapping] | None = None) -> Resolved:
    """The engine and precision this worker runs for --engine and --precision.

    auto: TensorFlow where a GPU is visible, otherwise OpenVINO on the CPU. Precision auto:
    on OpenVINO, bfloat16 where it is the faster (bfloat16_is_faster); on
    TensorFlow, mixed float16 where every visible GPU has tensor cores (fast_float16);
    float32 elsewhere. bfloat16 and int8 asked for run on OpenVINO (parsing refuses them
    with --engine tensorflow); auto never chooses int8. gpus: the device details of the
    visible GPUs (gpu_details(), read only when needed, by default).
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
            faster = bfloat16_is_faster(cpu_has_bf16(), cpu_info())
            precision = BFLOAT16 if faster else FLOAT32
        else:
            precision = FLOAT16 if fast_float16(visible()) else FLOAT32
    if engine == OPENVINO and precision == BFLOAT16 and not cpu_has_bf16():
        raise EngineUnavailableError(
            "--precision bfloat16: this worker's CPU does not compute bfloat16 (OpenVINO's "
            "OPTIMIZATION_CAPABILITIES lacks BF16; it needs AVX512_BF16 or AMX); use "
            "--precision auto or float32"
        )
    return Resolved(engine, precision)


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
