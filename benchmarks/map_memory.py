"""Peak memory of the --map branch for N/2, N, 2N and 4N synthetic embeddings.

Each run is a child process on Beam's in-memory FnApiRunner (so one process holds the
whole run) that embeds nothing: synthetic 2048-value embeddings with real thumbnails go
through the real Parquet sink and the real map branch. Beside it, the same PCA and
projection fed from the in-flight PCollection instead of the stored files: the design
not taken, to show what the measurement would catch. See docs/report.md, "The branch".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DIMENSIONS = 2048
CLUSTERS = 20
# store_only: the embeddings and the Parquet sink alone, the baseline the branch adds to.
DESIGNS = ("store_only", "read_back", "in_flight")


def synthetic(index: int, centres: np.ndarray, thumbnails: list[bytes]):
    """The index-th synthetic (ImageKey, embedding): a cluster centre plus noise."""
    from pipeline.common.records import ImageKey

    generator = np.random.default_rng(index)
    embedding = centres[index % CLUSTERS] + generator.normal(scale=0.5, size=DIMENSIONS)
    key = ImageKey(
        f"gs://bucket/synthetic/{index:07d}.jpg", 640, 480, thumbnails[index % len(thumbnails)]
    )
    return key, embedding.astype(np.float32)


def in_flight_batch(keyed):
    """One in-flight (ImageKey, embedding) as the StoredBatch that projection takes."""
    from pipeline.outputs.formats import StoredBatch

    key, embedding = keyed
    return StoredBatch([key.uri], embedding[None, :], np.array([[key.width, key.height]]))


def photo_thumbnails() -> list[bytes]:
    from PIL import Image

    from pipeline.inputs.images import thumbnail
    from pipeline.report.mapping import THUMBNAIL_SIZE

    made = []
    for path in sorted((REPO / "tests" / "data" / "photos").glob("*.*")):
        if path.suffix in (".png", ".jpg"):
            with Image.open(path) as image:
                made.append(thumbnail(image.convert("RGB"), THUMBNAIL_SIZE))
    return made


def run_branch(count: int, output: Path, design: str) -> None:
    """One pipeline: synthetic embeddings -> Parquet -> the map branch (or the contrast)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.options import EmbeddingOptions
    from pipeline.outputs import RunTarget, naming, sinks
    from pipeline.plan import provenance, run_context
    from pipeline.report.mapping import MapEmbeddings, ProjectFn
    from pipeline.report.projection import PrincipalComponentsFn
    from pipeline.run.summary import summarise

    flags = ["--input", "synthetic.csv", "--output", str(output), "--map", "--weights", "random"]
    opts = PipelineOptions(flags).view_as(EmbeddingOptions)
    shape = (DIMENSIONS,)
    started = time.time()
    run_id = naming.new_run_id(started)
    made = dataclasses.replace(provenance(opts), embedding_shape=shape)
    context = {"run_id": run_id, **run_context(opts, made)}
    record = summarise(
        None,
        rows_with_uri=count,
        duplicates=0,
        skipped=0,
        embedded=count,
        failed_by_stage={},
        first_failures=[],
        context=context,
        started_at=started,
    )
    centres = np.random.default_rng(0).normal(size=(CLUSTERS, DIMENSIONS))
    thumbnails = photo_thumbnails()
    options = PipelineOptions([], runner="FnApiRunner", direct_running_mode="in_memory")
    with beam.Pipeline(options=options) as p:
        embeddings = (
            p
            | "Indices" >> beam.Create(range(count))
            | "Synthesise" >> beam.Map(synthetic, centres, thumbnails)
        )
        schema = sinks.parquet_schema(shape, {"model": "synthetic"})
        stored = embeddings | "Store" >> sinks.WriteParquet(str(output), run_id, schema, 0)
        if design == "store_only":
            pass
        elif design == "read_back":
            _ = {
                "embeddings": embeddings,
                "files": stored["files"],
                "failures": p | "No failures" >> beam.Create([]),
                "summary": p | "Summary" >> beam.Create([record]),
            } | "Map embeddings" >> MapEmbeddings(RunTarget(str(output), run_id), 5000, 0)
        else:
            projection = (
                embeddings
                | "Embeddings" >> beam.Map(lambda keyed: keyed[1])
                | "PCA" >> beam.CombineGlobally(PrincipalComponentsFn())
            )
            _ = (
                embeddings
                | "Batches" >> beam.Map(in_flight_batch)
                | "Project"
                >> beam.ParDo(ProjectFn(), projection=beam.pvalue.AsSingleton(projection))
                | "Count" >> beam.combiners.Count.Globally()
            )


def measure(count: int, work: Path, design: str) -> dict:
    """Runs one child process; its peak RSS (from wait4) and wall time."""
    output = work / f"{design}-{count}"
    command = [sys.executable, __file__, "--child", design, str(count), str(output)]
    started = time.monotonic()
    # Arrow's default allocator keeps freed memory by its own schedule, which moved peak
    # RSS by +-100 MB between identical runs; glibc's malloc gives repeatable figures.
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    # wait4 rather than wait: it also gives the child's own peak RSS.
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}")
    # The map branch writes into its run's folder, as in a run before publishing.
    report = next(iter(output.glob("_runs/*/report.html")), output / "report.html")
    return {
        "design": design,
        "embeddings": count,
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "report_mb": report.stat().st_size / 2**20 if report.exists() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embeddings", type=int, default=20_000,
                        help="N; runs are made with N/2, N, 2N and 4N embeddings")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark-map")
    parser.add_argument(
        "--child", nargs=3, metavar=("DESIGN", "N", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        design, count, output = args.child
        run_branch(int(count), Path(output), design)
        return 0

    counts = (args.embeddings // 2, args.embeddings, args.embeddings * 2, args.embeddings * 4)
    rows = [measure(count, args.workdir, design) for design in DESIGNS for count in counts]
    (args.workdir / "map_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    peak = {(row["design"], row["embeddings"]): row["peak_rss_mb"] for row in rows}
    print(f"{'design':<12}{'embeddings':>12}{'peak RSS MB':>14}{'seconds':>10}{'report MB':>11}")
    for row in rows:
        report = f"{row['report_mb']:.1f}" if row["report_mb"] is not None else "-"
        print(f"{row['design']:<12}{row['embeddings']:>12,}{row['peak_rss_mb']:>14.0f}"
              f"{row['seconds']:>10.1f}{report:>11}")  # fmt: skip
    for design in ("read_back", "in_flight"):
        extra = [peak[design, count] - peak["store_only", count] for count in counts]
        slope = (extra[-1] - extra[1]) * 2**20 / (counts[-1] - counts[1])
        print(f"{design}: memory above store_only at " + ", ".join(
            f"{count:,}: {mb:+.0f} MB" for count, mb in zip(counts, extra, strict=True)
        ) + f"; {slope:,.0f} bytes per embedding from {counts[1]:,} to {counts[-1]:,} "
            f"(one embedding: {DIMENSIONS * 4:,} bytes)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
