"""Time, peak RSS and recall@10 of the similarity step on stored synthetic embeddings.

For each size, synthetic 2048-value float32 embeddings are written as the pipeline's
Parquet shards; a child process runs the similarity step alone (FindSimilar, --neighbors
10, local runner, one worker process per core) and reports its wall time, the peak RSS
of the launching process and of the largest Beam worker process it started, and the
cells' sizes. Recall@10 is measured against exact brute force (numpy) on a seeded sample
of queries. At the first size, the same step with one cell holding everything (exact
brute force) is timed too.

The embeddings have structure, as real ones do: overlapping clusters of about 200 images
in a 64-dimensional latent space (noise as large as the centres' spread), mapped to 2048
values through a random linear map and a ReLU, plus 0.5 (non-negative, like pooled ResNet
features, with a shared component).

With --grouping, the same embeddings with near-duplicates planted in (groups of 2 to 8,
pairs of identical copies, and chains whose links are above the threshold and whose
ends are not) are searched twice: without and with --duplicate_threshold, so that the
difference is the cost of the grouping. Every member's similarity to its representative
is then recomputed with numpy and checked against the threshold and the CSV.

With --compare, each size N is two collections of N: the first as above, the other
drawn anew from the same clusters with 5% of its rows near-copies of the first's; the
first is compared with the other (--compare_with, one nearest match per image, every
nearest written) and recall@1 is measured against exact brute force on a seeded sample
of queries, centred by the union's mean.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
DIMENSIONS = 2048
LATENT = 64
CLUSTER_SIZE = 200
NOISE = 1.0  # latent noise as large as the centres' spread: clusters overlap
ROWS_PER_FILE = 10_000
K = 10
QUERIES = 300
RUN_ID = "20260101T000000-000000"
THRESHOLD = 0.95
NEAR = 0.1  # a group member's noise, per value, as a fraction of the rows' spread: cos 0.995
LINK = 0.25  # a chain link's: cos 0.97 between neighbours, 0.94 two links apart
CHAIN = 30  # images in a chain
COPIED = 0.05  # --compare: the other collection's rows that are near-copies of the first's


def uri(index: int, collection: str = "synthetic") -> str:
    return f"gs://bucket/{collection}/{index:07d}.jpg"


def synthetic(count: int, seed: int = 0, rows_seed: int | None = None):
    """(start, (n, 2048) float32) blocks of clustered, non-negative embeddings; with
    rows_seed, other rows drawn from the same clusters and map (another collection of
    the same kind)."""
    generator = np.random.default_rng(seed)
    projection = generator.normal(size=(LATENT, DIMENSIONS)).astype(np.float32)
    centres = generator.normal(size=(max(1, count // CLUSTER_SIZE), LATENT))
    if rows_seed is not None:
        generator = np.random.default_rng(rows_seed)
    for start in range(0, count, ROWS_PER_FILE):
        rows = min(ROWS_PER_FILE, count - start)
        cluster = generator.integers(len(centres), size=rows)
        noise = generator.normal(scale=NOISE, size=(rows, LATENT))
        latent = centres[cluster] + noise
        yield start, np.maximum(latent.astype(np.float32) @ projection, 0.0) + 0.5


def planted(count: int, seed: int = 0):
    """synthetic() with near-duplicates written over 30% of each block's rows: groups of
    2 to 8 (20%; the pairs are identical copies) and chains of CHAIN images (10%)."""
    generator = np.random.default_rng(seed + 1)
    for start, block in synthetic(count, seed):
        spread = float((block - block.mean(axis=0)).std())
        row, groups_end = 0, int(len(block) * 0.2)
        size = 2
        while row + size <= groups_end:
            for member in range(row + 1, row + size):
                scale = 0.0 if size == 2 else NEAR * spread
                block[member] = block[row] + generator.normal(scale=scale, size=DIMENSIONS)
            row += size
            size = size + 1 if size < 8 else 2
        while row + CHAIN <= int(len(block) * 0.3):
            for member in range(row + 1, row + CHAIN):
                step = generator.normal(scale=LINK * spread, size=DIMENSIONS)
                block[member] = block[member - 1] + step
            row += CHAIN
        yield start, block


def other_collection(count: int, seed: int = 0):
    """synthetic() rows of the same clusters, drawn anew, with COPIED of them replaced by
    near-copies of the first collection's rows (noise NEAR of the spread): a collection
    that shares some images with the first, as an evaluation set leaked into training."""
    generator = np.random.default_rng(seed + 2)
    for (start, block), (_, first) in zip(
        synthetic(count, seed, rows_seed=seed + 3), synthetic(count, seed), strict=True
    ):
        spread = float((first - first.mean(axis=0)).std())
        copied = generator.choice(len(block), int(len(block) * COPIED), replace=False)
        noise = generator.normal(scale=NEAR * spread, size=(len(copied), DIMENSIONS))
        block[copied] = first[copied] + noise.astype(np.float32)
        yield start, block


def write_embeddings(
    folder: Path, count: int, blocks=synthetic, collection: str = "synthetic"
) -> list[str]:
    from pipeline.outputs.sinks import parquet_schema

    folder.mkdir(parents=True, exist_ok=True)
    schema = parquet_schema((DIMENSIONS,), {"model": "synthetic"})
    shards = (count + ROWS_PER_FILE - 1) // ROWS_PER_FILE
    paths = []
    for shard, (start, block) in enumerate(blocks(count)):
        path = folder / f"embeddings-{RUN_ID}-{shard:05d}-of-{shards:05d}.parquet"
        flat = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), DIMENSIONS)
        uris = [uri(i, collection) for i in range(start, start + len(block))]
        table = pa.table(
            {
                "uri": uris,
                "embedding": flat,
                "width": pa.array([640] * len(block), pa.int32()),
                "height": pa.array([480] * len(block), pa.int32()),
                "datapoint_id": uris,
                "model": ["synthetic"] * len(block),
                "run_id": [RUN_ID] * len(block),
            },
            schema=schema,
        )
        pq.write_table(table, path, compression="snappy")
        paths.append(str(path))
    return paths


def measure(folder: Path, cell_size: int, cells_per_image: int, threshold: float = -1) -> None:
    """Child process: the similarity step alone; prints seconds and peak RSS as JSON.
    With a threshold >= 0: no neighbours, only the search and (above 0) the grouping."""
    from pipeline.outputs import RunTarget
    from pipeline.similarity.find import FindSimilar, SimilaritySettings

    files = sorted(str(path) for path in folder.glob("embeddings-*.parquet"))
    output = result_folder(folder, cell_size, cells_per_image)
    settings = SimilaritySettings(K, 0.0, cell_size, cells_per_image, seed=0)
    if threshold >= 0:
        output = folder / f"grouped-{threshold}"
        settings = SimilaritySettings(0, threshold, cell_size, cells_per_image, seed=0)
    target = RunTarget(str(output), "20260101T000001-000001")
    run_step(files, output, target, FindSimilar(target, settings), "cell_rows")


def run_step(files: list[str], output: Path, target, step, cells: str) -> None:
    """Runs step on the stored files alone, moves its staged files into output, and
    prints its seconds, peak RSS and cell sizes (the distribution named cells) as JSON."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=0"])
    started = time.perf_counter()
    p = beam.Pipeline(options=options)
    _ = {"files": p | beam.Create(files)} | step
    result = p.run()
    result.wait_until_finish()
    # As publishing would: the run's files beside the embeddings, where the checks read.
    for path in Path(target.stage).iterdir():
        if path.is_file():
            path.replace(output / path.name)
    seconds = time.perf_counter() - started
    rows = result.metrics().query(MetricsFilter().with_name(cells))["distributions"][0].committed
    print(
        json.dumps(
            {
                "seconds": seconds,
                "launcher_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "cells": rows.count,
                "mean_cell": rows.sum / rows.count,
                "largest_cell": rows.max,
            }
        )
    )


def measure_compare(folder: Path, other: Path, cell_size: int, cells_per_image: int) -> None:
    """Child process: --compare_with alone, every image's nearest in the other collection
    written (no threshold); prints seconds and peak RSS as JSON."""
    from pipeline.outputs import RunTarget
    from pipeline.similarity.compare import CompareSettings, CompareWith

    files = sorted(str(path) for path in folder.glob("embeddings-*.parquet"))
    output = folder / f"compared-{cell_size}-{cells_per_image}"
    settings = CompareSettings(
        other=str(other.parent),
        other_format="parquet",
        other_runs=(RUN_ID,),
        threshold=-1.0,  # every image's nearest, for the recall
        matches=1,
        cell_size=cell_size,
        cells_per_image=cells_per_image,
        seed=0,
    )
    target = RunTarget(str(output), "20260101T000001-000001")
    run_step(files, output, target, CompareWith(target, settings), "compare_cell_rows")


def compare_recall(count: int, output: Path) -> dict:
    """Of QUERIES seeded images of the first collection, the fraction whose nearest image
    in the other (exact, numpy, centred by the union's mean) is the match found, and the
    worst shortfall of a found similarity below the exact one."""
    first = np.concatenate([block for _, block in synthetic(count)])
    other = np.concatenate([block for _, block in other_collection(count)])
    mean = (first.sum(axis=0, dtype=np.float64) + other.sum(axis=0, dtype=np.float64)) / (2 * count)

    def unit(rows: np.ndarray) -> np.ndarray:
        centred = rows - mean.astype(np.float32)
        return centred / np.linalg.norm(centred, axis=1, keepdims=True)

    queries = np.random.default_rng(1).choice(count, QUERIES, replace=False)
    scores = unit(first[queries]) @ unit(other).T
    exact = scores.max(axis=1)
    table = pq.read_table([str(p) for p in sorted(output.glob("matches-*.parquet"))])
    found = {
        row["uri"]: row["similarity"] for row in table.select(["uri", "similarity"]).to_pylist()
    }
    if len(found) != count:
        raise SystemExit(f"{len(found)} images have a nearest match, not {count}")
    similarities = np.array([found[uri(q)] for q in queries])
    return {
        "recall": float(np.mean(similarities >= exact - 1e-5)),
        "shortfall": float((exact - similarities).max()),
    }


def comparing(sizes: list[int], args) -> None:
    rows = []
    for count in sizes:
        folder = Path(args.work) / f"compare-{count}"
        ours, theirs = folder / "ours", folder / "theirs" / "embeddings"
        if not folder.exists():
            write_embeddings(ours, count)
            write_embeddings(theirs, count, other_collection, "other")
        command = [
            sys.executable, __file__, "--measure_compare", str(ours), "--other", str(theirs),
            "--cell_size", str(args.cell_size), "--cells_per_image", str(args.cells_per_image),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
        if done.returncode:
            raise SystemExit(done.stderr[-4000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        output = ours / f"compared-{args.cell_size}-{args.cells_per_image}"
        result |= compare_recall(count, output)
        rows.append((count, result))
        print(f"{count}: {result}", flush=True)
    print()
    print(
        f"--compare_with, --compare_matches 1, --similarity_cell_size {args.cell_size}, "
        f"--similarity_cells_per_image {args.cells_per_image}, {DIMENSIONS} values, 2 processes"
    )
    print(
        f"{'images':>17} {'seconds':>8} {'launcher MB':>12} {'worker MB':>10} {'cells':>6} "
        f"{'mean cell':>10} {'largest':>8} {'recall@1':>9} {'shortfall':>10}"
    )
    for count, result in rows:
        print(
            f"{f'{count:,} x {count:,}':>17} {result['seconds']:>8.1f} "
            f"{result['launcher_mb']:>12.0f} {result['worker_mb']:>10.0f} {result['cells']:>6,} "
            f"{result['mean_cell']:>10.0f} {result['largest_cell']:>8,} "
            f"{result['recall']:>9.3f} {result['shortfall']:>10.4f}"
        )


def result_folder(folder: Path, cell_size: int, cells_per_image: int) -> Path:
    """Where a measurement writes its neighbours: beside the embeddings, one per setting."""
    return folder / f"cells-{cell_size}-{cells_per_image}"


def run_measure(folder: Path, cell_size: int, cells_per_image: int, *flags: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        str(folder),
        "--cell_size",
        str(cell_size),
        "--cells_per_image",
        str(cells_per_image),
        *flags,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode:
        raise SystemExit(done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_neighbors(folder: Path) -> dict[str, list[str]]:
    table = pq.read_table([str(p) for p in sorted(folder.glob("neighbors-*.parquet"))])
    uris, neighbors = table.column("uri").to_pylist(), table.column("neighbors").to_pylist()
    return dict(zip(uris, neighbors, strict=True))


def recall_at_k(count: int, found: dict[str, list[str]]) -> float:
    """Mean fraction of each sampled query's exact top K that the step found."""
    matrix = np.concatenate([block for _, block in synthetic(count)])
    centred = matrix - matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    queries = np.random.default_rng(1).choice(count, QUERIES, replace=False)
    scores = unit[queries] @ unit.T
    scores[np.arange(QUERIES), queries] = -np.inf
    exact = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    hits = [len({uri(j) for j in exact[row]} & set(found[uri(q)])) for row, q in enumerate(queries)]
    return float(np.mean(hits)) / K


def check_groups(count: int, output: Path) -> dict:
    """Every member's similarity to its representative, recomputed: >= THRESHOLD and the
    CSV's, within 1e-4; and the summary's counts."""
    import csv

    matrix = np.concatenate([block for _, block in planted(count)])
    centred = matrix - matrix.mean(axis=0, dtype=np.float64).astype(np.float32)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    (path,) = output.glob("duplicates-*.csv")
    groups: dict[int, list[tuple[int, float, int]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            index = int(row["uri"].rsplit("/", 1)[1].split(".")[0])
            groups.setdefault(int(row["group"]), []).append(
                (index, float(row["similarity"]), int(row["component"]))
            )
    lowest, worst_error = 1.0, 0.0
    for members in groups.values():
        indices = [index for index, _, _ in members[1:]]
        recomputed = unit[indices] @ unit[members[0][0]]
        written = np.array([similarity for _, similarity, _ in members[1:]])
        lowest = min(lowest, float(recomputed.min()))
        worst_error = max(worst_error, float(np.abs(recomputed - written).max()))
    if lowest < THRESHOLD - 1e-5 or worst_error > 1e-4:
        raise SystemExit(f"invariant broken: lowest {lowest}, largest error {worst_error}")
    components = {component for members in groups.values() for _, _, component in members}
    return {
        "groups": len(groups),
        "grouped": sum(map(len, groups.values())),
        "components": len(components),
        "lowest": lowest,
        "error": worst_error,
    }


def grouping(sizes: list[int], args) -> None:
    rows = []
    for count in sizes:
        folder = Path(args.work) / f"planted-{count}"
        if not folder.exists():
            write_embeddings(folder, count, planted)
        cells = (folder, args.cell_size, args.cells_per_image)
        search = run_measure(*cells, "--threshold", "0")
        grouped = run_measure(*cells, "--threshold", str(THRESHOLD))
        grouped |= check_groups(count, folder / f"grouped-{THRESHOLD}")
        rows.append((count, search, grouped))
        print(f"{count}: {search} {grouped}", flush=True)
    print()
    print(
        f"--duplicate_threshold {THRESHOLD}, --similarity_cell_size {args.cell_size}, "
        f"--similarity_cells_per_image {args.cells_per_image}, {DIMENSIONS} values, 2 processes"
    )
    print(
        f"{'images':>8} {'search s':>9} {'grouped s':>10} {'worker MB':>10} {'groups':>7} "
        f"{'in groups':>10} {'components':>11} {'lowest sim':>11} {'max error':>10}"
    )
    for count, search, grouped in rows:
        print(
            f"{count:>8,} {search['seconds']:>9.1f} {grouped['seconds']:>10.1f} "
            f"{grouped['worker_mb']:>10.0f} {grouped['groups']:>7,} {grouped['grouped']:>10,} "
            f"{grouped['components']:>11,} {grouped['lowest']:>11.4f} {grouped['error']:>10.1e}"
        )


def main() -> None:
    from pipeline.options.flags import DEFAULT_CELL_SIZE, DEFAULT_CELLS_PER_IMAGE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,100000,200000")
    parser.add_argument("--cell_size", type=int, default=DEFAULT_CELL_SIZE)
    parser.add_argument("--cells_per_image", type=int, default=DEFAULT_CELLS_PER_IMAGE)
    parser.add_argument("--work", default=str(REPO / "out" / "benchmark-similarity"))
    parser.add_argument("--no_brute_force", action="store_true")
    parser.add_argument("--grouping", action="store_true", help="time --duplicate_threshold")
    parser.add_argument("--compare", action="store_true", help="time --compare_with, N x N")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure_compare", help=argparse.SUPPRESS)
    parser.add_argument("--other", help=argparse.SUPPRESS)
    parser.add_argument("--threshold", type=float, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure), args.cell_size, args.cells_per_image, args.threshold)
        return
    if args.measure_compare:
        measure_compare(
            Path(args.measure_compare), Path(args.other), args.cell_size, args.cells_per_image
        )
        return

    sizes = [int(size) for size in args.sizes.split(",")]
    if args.grouping:
        grouping(sizes, args)
        return
    if args.compare:
        comparing(sizes, args)
        return
    # Every measurement runs before this process loads anything large: a child's peak
    # RSS counts the pages it shared with this process when it was forked.
    rows = []
    for count in sizes:
        folder = Path(args.work) / str(count)
        if not folder.exists():
            write_embeddings(folder, count)
        rows.append((count, run_measure(folder, args.cell_size, args.cells_per_image)))
        print(f"{count}: {rows[-1][1]}", flush=True)
    brute = None
    if not args.no_brute_force:
        folder = Path(args.work) / str(sizes[0])
        brute = run_measure(folder, sizes[0] + 1, 1)
        print(f"brute force {sizes[0]}: {brute}", flush=True)
    for count, result in rows:
        folder = Path(args.work) / str(count)
        found = read_neighbors(result_folder(folder, args.cell_size, args.cells_per_image))
        result["recall"] = recall_at_k(count, found)

    print()
    print(
        f"--similarity_cell_size {args.cell_size}, --similarity_cells_per_image "
        f"{args.cells_per_image}, --neighbors {K}, {DIMENSIONS} values, 2 processes"
    )
    print(
        f"{'images':>8} {'seconds':>8} {'launcher MB':>12} {'worker MB':>10} {'cells':>6} "
        f"{'mean cell':>10} {'largest':>8} {'recall@10':>10}"
    )
    for count, result in [*rows, *([(sizes[0], brute | {"recall": 1.0})] if brute else [])]:
        print(
            f"{count:>8,} {result['seconds']:>8.1f} {result['launcher_mb']:>12.0f} "
            f"{result['worker_mb']:>10.0f} {result['cells']:>6,} {result['mean_cell']:>10.0f} "
            f"{result['largest_cell']:>8,} {result['recall']:>10.3f}"
        )
    if brute:
        print(f"the last row is exact brute force: one cell of all {sizes[0]:,} images")
    if len(rows) > 1:
        (n0, first), (n1, last) = rows[0], rows[-1]
        exponent = np.log(last["seconds"] / first["seconds"]) / np.log(n1 / n0)
        print(f"time grows as N^{exponent:.2f} from {n0:,} to {n1:,}")


if __name__ == "__main__":
    main()
