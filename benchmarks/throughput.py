"""Images/s of the pipeline beside the raw model and the original article's approach.

One run, one machine: prints a table and writes benchmark.json. See docs/performance.md,
"Throughput".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "photos"
CAMERA_SIZES = [(640, 480), (1280, 960), (1920, 1080), (3264, 2448), (4000, 3000)]
UNIQUE_IMAGES = 300
SEED = 0


# --- inputs -------------------------------------------------------------------------


def make_images(directory: Path, count: int) -> list[str]:
    """count camera-sized JPEGs from the sample photographs.

    The first UNIQUE_IMAGES are distinct files (photo x size x crop); beyond that,
    hard links to them give distinct URIs whose decode and inference cost the same.
    """
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))
    paths = []
    for index in range(count):
        path = directory / f"img_{index:05d}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        if index >= UNIQUE_IMAGES:
            os.link(directory / f"img_{index % UNIQUE_IMAGES:05d}.jpg", path)
            continue
        width, height = CAMERA_SIZES[index % len(CAMERA_SIZES)]
        with Image.open(photos[index % len(photos)]) as photo:
            source = photo.convert("RGB")
        shift = index // len(photos) % 7  # a different crop per repeat of a photo
        box = (shift * 3, shift * 2, source.width - shift * 2, source.height - shift * 3)
        source.crop(box).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
    return paths


def write_csv(path: Path, uris: list[str]) -> Path:
    path.write_text("uri\n" + "\n".join(uris) + "\n")
    return path


# --- measuring a command ----------------------------------------------------------------


def _tree_rss(root: int) -> int:
    """Resident bytes of root and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(command: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall time, CPU time and peak RSS (summed over the process tree) of a command."""
    before = os.times()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    after = os.times()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {
        "seconds": wall,
        "peak_rss_mb": peak / 2**20,
        "cpu_utilisation": cpu / (wall * os.cpu_count()),
        "stdout": stdout,
    }


# --- the four contenders ----------------------------------------------------------------


def resnet50():
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )


def model_gflop(model) -> float:
    """Multiply-adds of the convolutions and dense layers, x2, for one 224x224 image."""
    import keras

    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, out_channels = layer.output.shape[1:]
            kernel_h, kernel_w, in_channels, _ = layer.kernel.shape
            flops += 2 * height * width * out_channels * kernel_h * kernel_w * in_channels
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * int(np.prod(layer.kernel.shape))
    return flops / 1e9


def sgemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def raw_model(paths: list[str], batch_size: int) -> dict:
    """a. The same model on decoded, preprocessed batches in a tight loop."""
    import keras

    from pipeline.inputs.images import Resize, decode

    model = resnet50()
    rule = Resize(224)
    images = np.stack([decode(Path(p).read_bytes(), rule).pixels for p in paths[:batch_size]])
    batch = keras.applications.resnet50.preprocess_input(images.astype(np.float32))
    model.predict_on_batch(batch)  # compile and warm up
    batches = max(1, len(paths) // batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        model.predict_on_batch(batch)
    seconds = time.perf_counter() - started
    return {"images": batches * batch_size, "seconds": seconds, "gflop": model_gflop(model)}


def original_approach(paths: list[str], output: Path) -> dict:
    """c. The article's loop: PIL load and resize, one predict and one .npy per image."""
    from PIL import Image

    model = resnet50()
    output.mkdir(parents=True, exist_ok=True)
    model.predict(np.zeros((1, 224, 224, 3), np.float32), verbose=0)  # warm up, as for a.
    started = time.perf_counter()
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.resize((224, 224), Image.Resampling.LANCZOS), np.float32)
        embedding = model.predict(np.expand_dims(pixels, 0), verbose=0)
        np.save(output / (Path(path).stem + ".npy"), embedding)
    return {"images": len(paths), "seconds": time.perf_counter() - started}


def pipeline_run(csv_path: Path, output: Path, extra: list[str]) -> dict:
    """b. This pipeline end to end on the local runner, JPEG files to Parquet."""
    shutil.rmtree(output, ignore_errors=True)
    # The mode of large runs, also for N <= 500, where a run would otherwise stay in one
    # process: N and 2N must be measured alike for the steady-state rate.
    command = [sys.executable, "-m", "pipeline", "--input", str(csv_path),
               "--output", str(output), "--weights", "random",
               "--direct_running_mode", "multi_processing", *extra]  # fmt: skip
    result = measure(command)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["reconciled"] and summary["failed"] == 0, summary
    result["images"] = summary["embedded"]
    del result["stdout"]
    return result


def stock_runinference() -> str | None:
    """d. Beam's own TF handler, if it can be imported here; None when it can."""
    try:
        import apache_beam.ml.inference.tensorflow_inference  # noqa: F401
    except ImportError as error:
        return f"not measured: apache_beam.ml.inference.tensorflow_inference needs {error.name}"
    return None


# --- report ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000, help="N; the scaling run uses 2N")
    parser.add_argument("--original_images", type=int, default=100,
                        help="images for the slow original approach")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=REPO / "out" / "benchmark")
    parser.add_argument("--pipeline_args", default="", help="extra pipeline flags, quoted")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = args.workdir
    paths = make_images(work / "images", 2 * args.images)
    extra = args.pipeline_args.split()
    sgemm = sgemm_gflops()
    raw = raw_model(paths[: max(320, args.original_images)], batch_size=32)
    original = original_approach(paths[: args.original_images], work / "original")
    small = pipeline_run(write_csv(work / "n.csv", paths[: args.images]), work / "out_n", extra)
    large = pipeline_run(write_csv(work / "2n.csv", paths), work / "out_2n", extra)

    rate = {
        "a_raw_model": raw["images"] / raw["seconds"],
        "b_pipeline_whole_run": large["images"] / large["seconds"],
        "b_pipeline_steady_state": (large["images"] - small["images"])
        / (large["seconds"] - small["seconds"]),
        "c_original_approach": original["images"] / original["seconds"],
    }
    report = {
        "machine": {"cpus": os.cpu_count(), "sgemm_gflops": sgemm},
        "model_gflop_per_image": raw["gflop"],
        "flop_ceiling_images_per_second": sgemm / raw["gflop"],
        "images_per_second": rate,
        "d_stock_runinference": stock_runinference(),
        "ratios": {
            "b_over_a_steady_state": rate["b_pipeline_steady_state"] / rate["a_raw_model"],
            "b_over_a_whole_run": rate["b_pipeline_whole_run"] / rate["a_raw_model"],
            "b_over_c": rate["b_pipeline_steady_state"] / rate["c_original_approach"],
        },
        "scaling": {
            "n": small["images"],
            "seconds_n": small["seconds"],
            "seconds_2n": large["seconds"],
            "time_ratio_2n_over_n": large["seconds"] / small["seconds"],
            "peak_rss_mb_n": small["peak_rss_mb"],
            "peak_rss_mb_2n": large["peak_rss_mb"],
            "cpu_utilisation_2n": large["cpu_utilisation"],
        },
        "pipeline_args": extra,
    }
    (work / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict) -> None:
    rate, ratios, scaling = report["images_per_second"], report["ratios"], report["scaling"]
    machine = report["machine"]
    print(f"machine: {machine['cpus']} CPUs, sgemm {machine['sgemm_gflops']:.0f} GFLOP/s;"
          f" ResNet50 {report['model_gflop_per_image']:.2f} GFLOP/image;"
          f" FLOP ceiling {report['flop_ceiling_images_per_second']:.1f} images/s")  # fmt: skip
    print(f"{'contender':<44}{'images/s':>10}")
    for name, value in rate.items():
        print(f"{name:<44}{value:>10.2f}")
    print(f"{'d_stock_runinference':<44}{report['d_stock_runinference'] or 'measured'}")
    for name, value in ratios.items():
        print(f"{name:<44}{value:>10.2f}")
    n = scaling["n"]
    print(f"scaling: {n} images {scaling['seconds_n']:.1f} s, {2 * n} images "
          f"{scaling['seconds_2n']:.1f} s (x{scaling['time_ratio_2n_over_n']:.2f}); peak RSS "
          f"{scaling['peak_rss_mb_n']:.0f} MB -> {scaling['peak_rss_mb_2n']:.0f} MB; "
          f"CPU utilisation {scaling['cpu_utilisation_2n']:.0%}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
