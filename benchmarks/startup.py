"""Where a small local run's seconds go, and how it compares with a plain script.

The plain script is what a user would write without Beam: import Keras, build the same
random-weight ResNet50 (preprocess_input inside), decode and resize the same photos,
embed them in one batch and save the array. The pipeline is `python -m pipeline` on
the same photos. Both run as fresh processes, best of --runs by wall clock, in one run
of this script; the ratio is the target. The parts (imports, model build) are timed in
their own fresh processes. See docs/performance.md, "Start-up".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS_CSV = REPO / "tests" / "data" / "photos.csv"

PLAIN_SCRIPT = """
import csv, sys
import numpy as np
import keras
from PIL import Image

paths = [row["uri"] for row in csv.DictReader(open(sys.argv[1]))]
keras.utils.set_random_seed(0)
backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                       input_shape=(224, 224, 3))
images = np.stack([
    np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR))
    for p in paths
])
batch = keras.applications.resnet50.preprocess_input(images.astype("float32"))
np.save(sys.argv[2], backbone.predict_on_batch(batch))
"""

PARTS = {
    "import apache_beam": "import apache_beam",
    "import the launching CLI (pipeline.cli)": "import pipeline.cli",
    "import tensorflow + keras": "import keras",
    "import keras + build ResNet50 (random)": (
        "import keras; keras.applications.ResNet50(weights=None, include_top=False, "
        "pooling='avg', input_shape=(224, 224, 3))"
    ),
}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def best(command: list[str], runs: int) -> float:
    return min(timed(command) for _ in range(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each; the best counts")
    parser.add_argument(
        "--pipeline_args",
        default="",
        help="extra flags for the pipeline, e.g. '--direct_running_mode multi_processing'",
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, code in PARTS.items():
            rows.append((name, best([sys.executable, "-c", code], args.runs)))
        plain = best(
            [sys.executable, "-c", PLAIN_SCRIPT, str(PHOTOS_CSV), f"{work}/plain.npy"], args.runs
        )
        command = [
            sys.executable, "-m", "pipeline", "--input", str(PHOTOS_CSV),
            "--output", f"{work}/out", "--weights", "random", *args.pipeline_args.split(),
        ]  # fmt: skip
        pipeline = best(command, args.runs)
        summary = json.loads(Path(f"{work}/out/summary.json").read_text())
    print(f"{'part (fresh process, best of ' + str(args.runs) + ')':<48} seconds")
    for name, seconds in rows:
        print(f"{name:<48} {seconds:7.2f}")
    print(f"{'plain script: Keras, 13 photos':<48} {plain:7.2f}")
    print(f"{'pipeline: python -m pipeline, 13 photos':<48} {pipeline:7.2f}")
    print(f"pipeline / plain script: {pipeline / plain:.2f}")
    print(f"pipeline embedded {summary['embedded']} of {summary['rows_read']} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
