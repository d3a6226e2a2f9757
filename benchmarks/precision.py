"""bfloat16 and int8 against TensorFlow float32, with random weights, on the benchmark's
camera-sized JPEGs and the sample photographs: per-image cosine (raw and mean-centred)
and recall@10 of each image's nearest neighbours (all images, and those int8 was not
calibrated on), with the pipeline's own embedders; int8 calibrated, as a run would be, on
the first CALIBRATION_IMAGES images.

One run, one machine: prints a table. See docs/engine.md, "INT8".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import PHOTOS, make_images

REPO = Path(__file__).resolve().parent.parent
K = 10


def embed_all(embedder, images: np.ndarray, batch: int = 32) -> np.ndarray:
    parts = [embedder(images[i : i + batch]) for i in range(0, len(images), batch)]
    return np.concatenate(parts).reshape(len(images), -1).astype(np.float64)


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)


def nearest(embeddings: np.ndarray) -> np.ndarray:
    """Each row's K nearest other rows by cosine after mean-centring (as --neighbors)."""
    centred = embeddings - embeddings.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    similarity = centred @ centred.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1)[:, :K]


def recall(reference: np.ndarray, other: np.ndarray) -> float:
    pairs = zip(nearest(reference), nearest(other), strict=True)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in pairs]))


def main(argv: list[str] | None = None) -> int:
    from pipeline.inputs.images import decode
    from pipeline.models import CALIBRATION_IMAGES
    from pipeline.models.backbones import KERAS_HUB, ModelSpec
    from pipeline.models.engines import OpenVinoEmbedder
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet50", "clip_vit_base_patch16"])
    parser.add_argument("--images", type=int, default=300, help="camera-sized JPEGs")
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-models")
    args = parser.parse_args(argv)
    paths = make_images(args.workdir / "images", args.images)
    paths += sorted(str(p) for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))
    print(f"{len(paths)} images, the first {CALIBRATION_IMAGES} calibrate int8; random weights")
    print("| model | precision | worst cosine raw | mean-centred | recall@10 all | "
          "recall@10 not calibrated on | calibration s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        hub = ModelSpec.of(model, "random", "avg", 0).backbone.library == KERAS_HUB
        spec = ModelSpec.of(model, "random", None if hub else "avg", 0)
        rule = spec.resize("squash")  # keras-hub models have their own rule
        images = np.stack([decode(Path(p).read_bytes(), rule).pixels for p in paths])
        function = EmbeddingFunction(build_embedding_model(spec))
        reference = embed_all(function, images)
        held_out = np.arange(CALIBRATION_IMAGES, len(images))
        for precision in ("bfloat16", "int8"):
            started = time.perf_counter()
            calibration = images[:CALIBRATION_IMAGES] if precision == "int8" else None
            embedder = OpenVinoEmbedder(function, precision, calibration, transformer=hub)
            seconds = time.perf_counter() - started  # conversion included
            got = embed_all(embedder, images)
            centred = cosines(got - got.mean(0), reference - reference.mean(0))
            calibrated = f"{seconds:.1f}" if precision == "int8" else "-"
            print(
                f"| {model} | {precision} | {cosines(got, reference).min():.5f} | "
                f"{centred.min():.4f} | {recall(reference, got):.3f} | "
                f"{recall(reference[held_out], got[held_out]):.3f} | {calibrated} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
