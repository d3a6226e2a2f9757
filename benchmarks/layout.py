"""Images/s of the pipeline per process and thread layout on this machine's cores: one
thread in one process, one process with several threads running bundles at once, and a
process per core; at two input sizes, whose difference gives the marginal rate.

On Dataflow the same choice is one SDK process per VM with several harness threads
(--experiments=no_use_multiple_sdk_containers, --number_of_worker_harness_threads)
against Dataflow's default of a process per vCPU. One run, one machine: prints a table
and writes layout.json. See docs/performance.md, "Processes and threads".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import end_to_end
from throughput import make_images, write_csv

REPO = Path(__file__).resolve().parent.parent
LAYOUTS = ["in_memory", "threads:2", "threads:4", "processes:2"]


def layout_flags(layout: str) -> tuple[str, ...]:
    """The local runner's flags for in_memory, threads:N or processes:N."""
    mode, _, count = layout.partition(":")
    running_mode = {"in_memory": "in_memory", "threads": "multi_threading",
                    "processes": "multi_processing"}[mode]  # fmt: skip
    return ("--direct_running_mode", running_mode, "--direct_num_workers", count or "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet50"])
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["openvino:bfloat16", "tensorflow:float32"],
        help="ENGINE:PRECISION",
    )
    parser.add_argument("--layouts", nargs="+", default=LAYOUTS)
    parser.add_argument("--sizes", nargs=2, type=int, default=[60, 600], metavar=("N1", "N2"))
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-layout")
    args = parser.parse_args(argv)
    small, large = args.sizes
    paths = make_images(args.workdir / "images", large)
    csvs = {n: write_csv(args.workdir / f"images-{n}.csv", paths[:n]) for n in (small, large)}
    rows = []
    for model in args.models:
        for choice in args.engines:
            engine, precision = choice.split(":")
            for layout in args.layouts:
                flags = layout_flags(layout)
                runs = {
                    n: end_to_end(model, engine, precision, csvs[n], args.workdir / "out", flags)
                    for n in (small, large)
                }
                seconds = runs[large]["seconds"] - runs[small]["seconds"]
                rows.append({
                    "model": model, "engine": engine, "precision": precision,
                    "layout": layout, "marginal": (large - small) / seconds,
                    "whole_run": {n: run["images"] / run["seconds"] for n, run in runs.items()},
                    "cpu": runs[large]["cpu"], "peak_rss_mb": runs[large]["peak_rss_mb"],
                })  # fmt: skip
                print(rows[-1], file=sys.stderr, flush=True)
    report = {"cpus": os.cpu_count(), "sizes": args.sizes, "rows": rows}
    (args.workdir / "layout.json").write_text(json.dumps(report, indent=2))
    print(f"{os.cpu_count()} CPUs, random weights, camera-sized JPEGs; marginal = "
          f"({large} - {small}) images / the difference of the two runs' wall times; "
          f"CPU busy = CPU seconds / (wall x cores) of the {large}-image run")  # fmt: skip
    print(
        f"| model | engine | layout | whole run {small} | whole run {large} | marginal | "
        "marginal / in_memory | CPU busy | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    single = {(r["model"], r["engine"], r["precision"]): r["marginal"]
              for r in rows if r["layout"] == "in_memory"}  # fmt: skip
    for r in rows:
        base = single.get((r["model"], r["engine"], r["precision"]))
        versus = f"{r['marginal'] / base:.2f}" if base else "-"
        print(
            f"| {r['model']} | {r['engine']} {r['precision']} | {r['layout']} | "
            f"{r['whole_run'][small]:.1f} | {r['whole_run'][large]:.1f} | {r['marginal']:.1f} | "
            f"{versus} | {r['cpu']:.0%} | {r['peak_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
