"""The engines on this machine, with random weights: OpenVINO float32 and bfloat16 against
TensorFlow float32 on the sample photographs (worst relative error, worst raw and
mean-centred cosine), and images/s of a batch of 32 inferred by one OpenVINO request
against the same batch split over the compiled model's streams (what the handler does),
in bfloat16 and in float32: what --precision auto weighs (pipeline.models.engines,
bfloat16_is_faster).

Prints one line per figure; see docs/engine.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = sorted(str(p) for p in (REPO / "tests/data/photos").iterdir() if p.suffix != ".md")


def photographs(spec) -> np.ndarray:
    from pipeline.inputs.images import decode

    rule = spec.resize("squash")
    return np.stack([decode(Path(p).read_bytes(), rule, jpeg_draft=False).pixels for p in PHOTOS])


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    first, second = first.astype(np.float64), second.astype(np.float64)
    return (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)


def accuracy(model: str) -> None:
    from pipeline.models.backbones import ModelSpec
    from pipeline.models.engines import OpenVinoEmbedder
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    spec = ModelSpec.of(model, "random", "avg", 0)
    function = EmbeddingFunction(build_embedding_model(spec))
    images = photographs(spec)
    reference = function(images)
    for precision in ("float32", "bfloat16"):
        got = OpenVinoEmbedder(function, precision)(images)
        error = np.linalg.norm(got - reference, axis=1) / np.linalg.norm(reference, axis=1)
        centred = cosines(got - got.mean(0), reference - reference.mean(0))
        print(
            f"{model} openvino {precision}: worst relative error {error.max():.2e}, "
            f"worst cosine raw {cosines(got, reference).min():.6f}, "
            f"centred {centred.min():.6f} ({len(images)} photographs)"
        )


def speed(model: str, batch: int, repeats: int) -> None:
    import openvino as ov

    from pipeline.models.backbones import ModelSpec
    from pipeline.models.engines import OpenVinoEmbedder
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    spec = ModelSpec.of(model, "random", "avg", 0)
    function = EmbeddingFunction(build_embedding_model(spec))
    images = np.resize(photographs(spec), (batch, spec.input_size, spec.input_size, 3))
    converted = ov.convert_model(function.concrete_function())
    one = ov.Core().compile_model(
        converted, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}
    )
    request = one.create_infer_request()
    runs = {
        "one request, LATENCY hint": lambda: request.infer({0: images}),
        "split over streams, THROUGHPUT hint": OpenVinoEmbedder(function, "bfloat16").__call__,
        "split over streams, THROUGHPUT hint, float32": OpenVinoEmbedder(function, "float32"),
        "tensorflow float32": function,
    }
    best = dict.fromkeys(runs, 0.0)
    for name, run in runs.items():
        run(images) if name != "one request, LATENCY hint" else run()
    for _ in range(repeats):  # interleaved, so that other load hits every way alike
        for name, run in runs.items():
            started = time.perf_counter()
            run(images) if name != "one request, LATENCY hint" else run()
            best[name] = max(best[name], batch / (time.perf_counter() - started))
    for name, rate in best.items():
        print(f"{model} batch {batch}, {name}: {rate:.1f} images/s (best of {repeats})")
    ratio = (
        best["split over streams, THROUGHPUT hint"]
        / best["split over streams, THROUGHPUT hint, float32"]
    )
    print(f"{model}: OpenVINO bfloat16 / float32, split over streams: {ratio:.2f}x")


def cpu() -> str:
    from pipeline.models.engines import cpu_has_bf16, cpu_info

    amx = "amx_bf16" in cpu_info().flags
    return f"CPU: OpenVINO BF16 {'yes' if cpu_has_bf16() else 'no'}, AMX {'yes' if amx else 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,efficientnet_b0,clip_vit_base_patch16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed_models", default="resnet50", help="models timed, comma-separated")
    args = parser.parse_args()
    print(cpu())
    for model in args.models.split(","):
        accuracy(model)
    for model in args.speed_models.split(","):
        speed(model, args.batch, args.repeats)


if __name__ == "__main__":
    main()
