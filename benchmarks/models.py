"""Images/s of each model and engine on this machine, with random weights: the raw engine
on batches the load step already sized, and the pipeline end to end on the same JPEGs at
two sizes, whose difference gives the marginal (steady-state) rate; plus peak memory.

Also the CPU time decoding one of these JPEGs takes (read, draft decode, resize), and so
the ceiling of the end-to-end rate when decoding and inference share the cores:
1 / (1 / raw + decode seconds / cores).

Every figure is printed as the median of its repeats with their spread, min-max: the
raw rate of three timings, each whole run and the marginal rate of --repeats pairs of
runs (the two sizes one after the other, so that a busy spell slows both). The default
sizes are far enough apart for the fastest engine here to take 20 s or more over the
difference; a line warns where the runs of a pair differ by less. One machine: prints a
table and writes models.json. See docs/performance.md, "Models and engines".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_images, measure, write_csv

REPO = Path(__file__).resolve().parent.parent
MODELS = ["resnet50", "clip_vit_base_patch16"]  # --models for the others (docs/performance.md)
ENGINES = ["tensorflow:float32", "openvino:float32", "openvino:bfloat16"]
# Asked for by name only: int8 quantises the model first (15-95 s a model here).
CHOICES = [*ENGINES, "openvino:int8"]
# 1,900 images more: 22 s at the 87 images/s OpenVINO bfloat16 reached with ResNet50 on
# 2 AMX cores, where 240 more took about 3 s, less than two runs' noise.
SIZES = (100, 2000)
MIN_SECONDS = 20.0  # of the pair's difference, for a marginal rate above the noise


def decode_seconds(model: str, paths: list[str]) -> float:
    """CPU seconds per image of the load step's read, decode and resize for this model."""
    from pipeline.inputs.images import decode
    from pipeline.models.backbones import ModelSpec

    rule = ModelSpec.of(model, "random", "avg", 0).resize("squash")
    started = time.process_time()
    for path in paths:
        decode(Path(path).read_bytes(), rule)
    return (time.process_time() - started) / len(paths)


def raw_rates(model: str, engine: str, precision: str, paths: list[str], batch: int) -> list[float]:
    """images/s of the engine alone, three timings: the handler's own model, one batch again
    and again; int8 quantised as a pipeline run on these paths quantises it (its first
    images)."""
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
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(repeats):
            embed(images)
        rates.append(repeats * len(images) / (time.perf_counter() - started))
    return rates


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


def paired_runs(
    model: str, engine: str, precision: str, csvs: dict[int, Path], workdir: Path, repeats: int
) -> list[dict[int, dict]]:
    """repeats pairs of end-to-end runs, each pair one run of each size in a row."""
    return [
        {
            n: end_to_end(model, engine, precision, csv, workdir / f"out-{n}")
            for n, csv in csvs.items()
        }
        for _ in range(repeats)
    ]


def spread(values: list[float]) -> str:
    """median (min-max), one decimal."""
    return f"{median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def measure_row(
    model: str, choice: str, paths: list[str], csvs: dict[int, Path], args: argparse.Namespace
) -> dict:
    """One model on one ENGINE:PRECISION: raw rates, whole-run rates per size, marginal rates
    and the seconds between the runs of each pair."""
    engine, precision = choice.split(":")
    small, large = args.sizes
    raw = raw_rates(model, engine, precision, paths, args.batch)
    pairs = paired_runs(model, engine, precision, csvs, args.workdir, args.repeats)
    differences = [pair[large]["seconds"] - pair[small]["seconds"] for pair in pairs]
    return {
        "model": model, "engine": engine, "precision": precision, "raw": raw,
        "whole_run": {n: [pair[n]["images"] / pair[n]["seconds"] for pair in pairs] for n in csvs},
        "difference_seconds": differences,
        # A pair whose larger run was no slower: infinite, and warn_short names it.
        "marginal": [(large - small) / s if s > 0 else float("inf") for s in differences],
        "peak_rss_mb": max(pair[large]["peak_rss_mb"] for pair in pairs),
    }  # fmt: skip


def print_table(rows: list[dict], sizes: list[int]) -> None:
    """The Markdown table: rates as median (min-max), ratios of the medians."""
    small, large = sizes
    print(
        f"| model | engine | raw images/s | whole run {small} | whole run {large} | "
        "marginal | marginal / raw | ceiling / raw | marginal / TF fp32 marginal | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    tensorflow = {r["model"]: median(r["marginal"]) for r in rows if r["engine"] == "tensorflow"}
    for r in rows:
        raw, marginal = median(r["raw"]), median(r["marginal"])
        base = tensorflow.get(r["model"])
        versus = f"{marginal / base:.2f}" if base else "-"
        print(
            f"| {r['model']} | {r['engine']} {r['precision']} | {spread(r['raw'])} | "
            f"{spread(r['whole_run'][small])} | {spread(r['whole_run'][large])} | "
            f"{spread(r['marginal'])} | {marginal / raw:.2f} | {r['ceiling'] / raw:.2f} | "
            f"{versus} | {r['peak_rss_mb']:.0f} |"
        )


def warn_short(rows: list[dict]) -> None:
    """A line for each row whose pairs differ by less than MIN_SECONDS: noise there
    moves its marginal rate by more than the engines differ."""
    for r in rows:
        shortest = min(r["difference_seconds"])
        if shortest < MIN_SECONDS:
            print(
                f"note: {r['model']} {r['engine']} {r['precision']}: a pair of runs differed "
                f"by {shortest:.1f} s, under {MIN_SECONDS:.0f} s; raise --sizes for a "
                "marginal rate above the noise"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument(
        "--engines", nargs="+", default=ENGINES, choices=CHOICES, help="ENGINE:PRECISION"
    )
    parser.add_argument(
        "--sizes", nargs=2, type=int, default=list(SIZES), metavar=("N1", "N2"),
        help="images in the two end-to-end runs (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="pairs of end-to-end runs, one of each size (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-models")
    args = parser.parse_args(argv)
    small, large = args.sizes
    paths = make_images(args.workdir / "images", large)
    csvs = {n: write_csv(args.workdir / f"images-{n}.csv", paths[:n]) for n in (small, large)}
    rows, decodes = [], {}
    for model in args.models:
        decodes[model] = decode_seconds(model, paths)
        for choice in args.engines:
            rows.append(measure_row(model, choice, paths, csvs, args))
    cores = os.cpu_count()
    for r in rows:
        r["decode_ms"] = decodes[r["model"]] * 1000
        r["ceiling"] = 1 / (1 / median(r["raw"]) + r["decode_ms"] / 1000 / cores)
    report = {"cpus": cores, "sizes": args.sizes, "repeats": args.repeats, "rows": rows}
    (args.workdir / "models.json").write_text(json.dumps(report, indent=2))
    decoding = ", ".join(f"{m} {s * 1000:.1f} ms CPU per image" for m, s in decodes.items())
    print(f"{cores} CPUs, random weights, camera-sized JPEGs; marginal = "
          f"({large} - {small}) images / the difference of a pair's wall times; "
          f"median (min-max) of {args.repeats} pairs, raw of 3 timings; decoding: "
          f"{decoding}; ceiling = 1 / (1 / raw + decode / cores)")  # fmt: skip
    print_table(rows, args.sizes)
    warn_short(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
