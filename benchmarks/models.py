"""Images/s of each model and engine on this machine, with random weights: the raw engine
on batches the load step already sized, and the pipeline end to end on the same JPEGs at
two sizes, whose difference gives the marginal (steady-state) rate; plus peak memory.

Also the CPU time decoding one of these JPEGs takes (read, draft decode, resize), and so
the ceiling of the end-to-end rate when decoding and inference share the cores:
1 / (1 / raw + decode seconds / cores).

One run, one machine (each rate the best of --repeats): prints a table and writes
models.json. See docs/performance.md, "Models and engines".
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
MODELS = ["resnet50", "clip_vit_base_patch16"]  # --models for the others (docs/performance.md)
ENGINES = ["tensorflow:float32", "openvino:float32", "openvino:bfloat16"]
# Asked for by name only: int8 quantises the model first (15-95 s a model here).
CHOICES = [*ENGINES, "openvino:int8"]


def decode_seconds(model: str, paths: list[str]) -> float:
    """CPU seconds per image of the load step's read, decode and resize for this model."""
    from pipeline.inputs.images import decode
    from pipeline.models.backbones import ModelSpec

    rule = ModelSpec.of(model, "random", "avg", 0).resize("squash")
    started = time.process_time()
    for path in paths:
        decode(Path(path).read_bytes(), rule)
    return (time.process_time() - started) / len(paths)


def raw_rate(model: str, engine: str, precision: str, paths: list[str], batch: int) -> float:
    """images/s of the engine alone: the handler's own model, one batch again and again;
    int8 quantised as a pipeline run on these paths quantises it (its first images)."""
    from pipeline.inputs import Decoding
    from pipeline.inputs.images import decode
    from pipeline.models.backbones import KERAS_HUB, ModelSpec
    from pipeline.models.calibration import CALIBRATION_IMAGES, CalibrationSample
    from pipeline.models.engines import INT8, OpenVinoEmbedder
    from pipeline.models.handler import EmbeddingFunction, build_embedding_model

    spec = ModelSpec.of(model, "random", "avg", 0)
    rule = spec.resize("squash")
    images = np.stack([decode(Path(p).read_bytes(), rule).pixels for p in paths[:batch]])
    embed = EmbeddingFunction(build_embedding_model(spec))
    if engine == "openvino":
        calibration = None
        if precision == INT8:
            calibration = CalibrationSample(
                tuple(paths[:CALIBRATION_IMAGES]), Decoding(rule)
            ).load()
        transformer = spec.backbone.library == KERAS_HUB
        embed = OpenVinoEmbedder(embed, precision, calibration, transformer=transformer)
    embed(images)  # trace or compile, and warm up
    repeats = max(2, 96 // batch)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            embed(images)
        best = min(best, time.perf_counter() - started)
    return repeats * len(images) / best


def end_to_end(
    model: str, engine: str, precision: str, csv_path: Path, output: Path, extra: tuple = ()
) -> dict:
    """python -m pipeline on the local runner, JPEG files to Parquet (extra: more flags)."""
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, "-m", "pipeline", "--input", str(csv_path),
               "--output", str(output), "--model", model, "--weights", "random",
               "--engine", engine, "--precision", precision, *extra]  # fmt: skip
    result = measure(command)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["reconciled"] and summary["failed"] == 0, summary
    return {"images": summary["embedded"], "seconds": result["seconds"],
            "peak_rss_mb": result["peak_rss_mb"], "cpu": result["cpu_utilisation"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument(
        "--engines", nargs="+", default=ENGINES, choices=CHOICES, help="ENGINE:PRECISION"
    )
    parser.add_argument("--sizes", nargs=2, type=int, default=[60, 300], metavar=("N1", "N2"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="end-to-end runs per size")
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-models")
    args = parser.parse_args(argv)
    small, large = args.sizes
    paths = make_images(args.workdir / "images", large)
    csvs = {n: write_csv(args.workdir / f"images-{n}.csv", paths[:n]) for n in (small, large)}
    rows, decodes = [], {}
    for model in args.models:
        decodes[model] = decode_seconds(model, paths)
        for choice in args.engines:
            engine, precision = choice.split(":")
            raw = raw_rate(model, engine, precision, paths, args.batch)
            runs = {
                n: min(
                    (
                        end_to_end(model, engine, precision, csvs[n], args.workdir / f"out-{n}")
                        for _ in range(args.repeats)
                    ),
                    key=lambda run: run["seconds"],
                )
                for n in (small, large)
            }
            marginal = (large - small) / (runs[large]["seconds"] - runs[small]["seconds"])
            rows.append({
                "model": model, "engine": engine, "precision": precision, "raw": raw,
                "whole_run": {n: run["images"] / run["seconds"] for n, run in runs.items()},
                "marginal": marginal, "peak_rss_mb": runs[large]["peak_rss_mb"],
                "decode_ms": decodes[model] * 1000,
            })  # fmt: skip
    cores = os.cpu_count()
    for r in rows:
        r["ceiling"] = 1 / (1 / r["raw"] + r["decode_ms"] / 1000 / cores)
    report = {"cpus": cores, "sizes": args.sizes, "rows": rows}
    (args.workdir / "models.json").write_text(json.dumps(report, indent=2))
    decoding = ", ".join(f"{m} {s * 1000:.1f} ms CPU per image" for m, s in decodes.items())
    print(f"{cores} CPUs, random weights, camera-sized JPEGs; marginal = "
          f"({large} - {small}) images / the difference of the two runs' wall times; "
          f"best of {args.repeats} runs each; decoding: {decoding}; "
          "ceiling = 1 / (1 / raw + decode / cores)")  # fmt: skip
    print(
        f"| model | engine | raw images/s | whole run {small} | whole run {large} | "
        "marginal | marginal / raw | ceiling / raw | marginal / TF fp32 marginal | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    tensorflow = {r["model"]: r["marginal"] for r in rows if r["engine"] == "tensorflow"}
    for r in rows:
        base = tensorflow.get(r["model"])
        versus = f"{r['marginal'] / base:.2f}" if base else "-"
        print(
            f"| {r['model']} | {r['engine']} {r['precision']} | {r['raw']:.1f} | "
            f"{r['whole_run'][small]:.1f} | {r['whole_run'][large]:.1f} | {r['marginal']:.1f} | "
            f"{r['marginal'] / r['raw']:.2f} | {r['ceiling'] / r['raw']:.2f} | "
            f"{versus} | {r['peak_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
