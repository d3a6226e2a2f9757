"""Images/s of each model on this machine: the raw embedding model, and the pipeline end
to end on the same JPEGs, with random weights; plus the end-to-end run's peak memory.

One run, one machine: prints a table and writes models.json. See docs/performance.md,
"Models".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_images, measure, write_csv

REPO = Path(__file__).resolve().parent.parent
MODELS = ["resnet50", "clip_vit_base_patch16", "siglip2_base_patch16_224", "dinov2_small"]


def raw_model(model: str, paths: list[str], batch_size: int) -> dict:
    """The pipeline's own embedding function on images the load step already sized."""
    from pipeline.inputs.images import decode
    from pipeline.models.backbones import ModelSpec
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    spec = ModelSpec.of(model, "random", "avg", 0)
    rule = spec.resize("squash")
    images = np.stack([decode(Path(p).read_bytes(), rule).pixels for p in paths[:batch_size]])
    embed = EmbeddingFunction(build_embedding_model(spec))
    embed(images)  # trace and warm up
    batches = max(1, len(paths) // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        embed(images)
    seconds = time.perf_counter() - started
    return {"images": batches * batch_size, "seconds": seconds}


def end_to_end(model: str, csv_path: Path, output: Path) -> dict:
    """python -m pipeline on the local runner, JPEG files to Parquet, in one process."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "pipeline", "--input", str(csv_path),
               "--output", str(output), "--model", model, "--weights", "random"]  # fmt: skip
    result = measure(command)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["reconciled"] and summary["failed"] == 0, summary
    return {"images": summary["embedded"], "seconds": result["seconds"],
            "peak_rss_mb": result["peak_rss_mb"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-models")
    args = parser.parse_args(argv)
    paths = make_images(args.workdir / "images", args.images)
    csv_path = write_csv(args.workdir / "images.csv", paths)
    report = {"images": args.images, "cpus": os.cpu_count(), "models": {}}
    for model in args.models:
        raw = raw_model(model, paths, args.batch_size)
        run = end_to_end(model, csv_path, args.workdir / f"out-{model}")
        report["models"][model] = {
            "raw_images_per_second": raw["images"] / raw["seconds"],
            "end_to_end_images_per_second": run["images"] / run["seconds"],
            "end_to_end_peak_rss_mb": run["peak_rss_mb"],
        }
    (args.workdir / "models.json").write_text(json.dumps(report, indent=2))
    print(f"{args.images} JPEGs, {report['cpus']} CPUs, random weights; end to end includes "
          "start-up (one local process)")  # fmt: skip
    print("| model | raw images/s | end to end images/s | end to end, peak RSS MB |")
    print("|---|---|---|---|")
    for model, row in report["models"].items():
        print(f"| {model} | {row['raw_images_per_second']:.1f} | "
              f"{row['end_to_end_images_per_second']:.1f} | "
              f"{row['end_to_end_peak_rss_mb']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
