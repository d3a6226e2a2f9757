"""End-to-end images/s on a GPU: TensorFlow float32, mixed float16 (what --precision auto runs
on a GPU with tensor cores) and mixed float16 compiled by XLA, for ResNet50 and CLIP ViT-B/16
on random weights, with JPEG decoding on the CPU's cores in a thread pool.

    PYTHONPATH=$PWD python benchmarks/gpu.py              # on the GPU machine: 1000 images
    PYTHONPATH=$PWD python benchmarks/gpu.py --images 40  # a dry run on a CPU

Prints a table: images/s per model and way, and each way's worst cosine to float32 on the
first batch (1.0 exactly means nothing ran in float16). XLA runs batches padded to one
size, so that it compiles once. Without a GPU of compute capability 7.0 or more the
float16 rows say so. See
docs/engine.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_images

MODELS = ("resnet50", "clip_vit_base_patch16")
WAYS = ("float32", "mixed float16", "mixed float16 + XLA")


def decoded(paths: list[str], rule, threads: int) -> Iterator[np.ndarray]:
    """The images, decoded and resized as the load step does, in order, by a thread pool
    that works ahead of the consumer."""
    from pipeline.inputs.images import decode

    def one(path: str) -> np.ndarray:
        return decode(Path(path).read_bytes(), rule).pixels

    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(one, paths)


def batches(images: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def padded(embed: Callable, size: int) -> Callable:
    """embed on batches padded with black images to `size`, the padding's rows dropped."""

    def run(images: np.ndarray) -> np.ndarray:
        count = len(images)
        if count < size:
            images = np.concatenate([images, np.zeros((size - count, *images.shape[1:]), np.uint8)])
        return embed(images)[:count]

    return run


def embedders(spec, batch: int, gpu: bool) -> dict[str, Callable | None]:
    """Each way's embed function (None where it cannot run here)."""
    import keras
    import tensorflow as tf

    from pipeline.models.engines import FLOAT16, TensorFlowEmbedder
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    function = EmbeddingFunction(build_embedding_model(spec))
    ways: dict[str, Callable | None] = {"float32": TensorFlowEmbedder(function)}
    if not gpu:
        return {**ways, "mixed float16": None, "mixed float16 + XLA": None}
    ways["mixed float16"] = TensorFlowEmbedder(function, FLOAT16)
    # Grappler does not rewrite a function XLA compiles whole, so this way builds the model
    # under Keras's mixed_float16 policy (the same seeded random weights, kept in float32).
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = build_embedding_model(spec)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    size = spec.input_size
    compiled = tf.function(
        lambda images: tf.cast(model(images, training=False), tf.float32),
        input_signature=[tf.TensorSpec([batch, size, size, 3], tf.uint8)],
        jit_compile=True,
    )
    ways["mixed float16 + XLA"] = padded(lambda images: compiled(images).numpy(), batch)
    return ways


def cosine(first: np.ndarray, second: np.ndarray) -> float:
    first, second = first.astype(np.float64), second.astype(np.float64)
    dot = (first * second).sum(1)
    return float((dot / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)).min())


def measure(model: str, paths: list[str], batch: int, threads: int, gpu: bool) -> list[tuple]:
    from pipeline.models.backbones import ModelSpec

    spec = ModelSpec.of(model, "random", "avg", 0)
    rule = spec.resize("squash")
    first = np.stack(list(decoded(paths[:batch], rule, threads)))
    ways = embedders(spec, batch, gpu)
    reference = ways["float32"](first)
    rows = []
    for way, embed in ways.items():
        if embed is None:
            rows.append((model, way, "no GPU with tensor cores", ""))
            continue
        similar = cosine(embed(first), reference)  # also the warm-up: tracing, compiling
        started = time.perf_counter()
        count = sum(len(embed(images)) for images in batches(decoded(paths, rule, threads), batch))
        rate = count / (time.perf_counter() - started)
        rows.append((model, way, f"{rate:.1f}", f"{similar:.6f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--folder", type=Path, help="where the JPEGs go (default: a temporary one)")
    args = parser.parse_args()

    import tensorflow as tf

    from pipeline.models.engines import fast_float16, gpu_details

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    gpus = gpu_details()
    print(f"GPUs: {gpus or 'none'}; {args.threads} decoding threads; batch {args.batch}")
    with tempfile.TemporaryDirectory() as temporary:
        paths = make_images(args.folder or Path(temporary), args.images)
        rows = [("model", "way", "images/s", "worst cosine to float32")]
        for model in args.models.split(","):
            rows += measure(model, paths, args.batch, args.threads, fast_float16(gpus))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            + " |"
        )


if __name__ == "__main__":
    main()
