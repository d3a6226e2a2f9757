"""Where a small local run's seconds go, and how it compares with a plain script.

The plain script is what a user would write without Beam: import Keras, build the same
random-weight ResNet50 (preprocess_input inside), decode and resize the same photos,
embed them in one batch and save the array. The pipeline is `python -m pipeline` on
the same photos, from this working tree and from any --revisions (exported with git
archive) or --trees beside it. Every command runs as a fresh process, once per round,
the rounds interleaving them (each round in a rotated order), so that a busy machine
slows them alike; the ratio is taken within each round and printed with its spread
(min / median / max). The parts (imports, model build) are timed in their own fresh
processes. See docs/performance.md, "Start-up".
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
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


@dataclass
class Command:
    """One command timed once per round: wall and CPU seconds (its own and its children's)."""

    name: str
    argv: list[str]
    cwd: Path = REPO
    output: Path | None = None  # removed before each run: every run starts afresh
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def run(self) -> None:
        if self.output:
            shutil.rmtree(self.output, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        # PYTHONPATH: a tree's own pipeline package, before the editable install's.
        env = {**os.environ, "PYTHONPATH": str(self.cwd)}
        done = subprocess.run(self.argv, cwd=self.cwd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{self.name} failed:\n{done.stderr[-3000:]}")
        self.walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def spread(values: list[float]) -> str:
    """min / median / max, as the table prints them."""
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


def absolute_photos(work: Path) -> Path:
    """The sample photographs' CSV with absolute URIs, so that every tree reads the same
    files whatever its working directory."""
    with PHOTOS_CSV.open(newline="") as source:
        rows = list(csv.DictReader(source))
    path = work / "photos.csv"
    with path.open("w", newline="") as target:
        writer = csv.DictWriter(target, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "uri": str(REPO / row["uri"])})
    return path


def export_revision(revision: str, work: Path) -> Path:
    """The revision's files (git archive) in a folder of their own."""
    archive = subprocess.run(
        ["git", "archive", revision], cwd=REPO, check=True, capture_output=True
    ).stdout
    folder = work / f"rev-{revision.replace('/', '_')}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def pipelines(args: argparse.Namespace, work: Path, photos: Path) -> list[Command]:
    """python -m pipeline from the working tree, each revision and each tree."""
    trees = {"working tree": REPO}
    trees |= {rev: export_revision(rev, work) for rev in args.revisions}
    trees |= {str(tree): tree.resolve() for tree in args.trees}
    commands = []
    for index, (name, tree) in enumerate(trees.items()):
        output = work / f"out-{index}"
        argv = [
            sys.executable, "-m", "pipeline", "--input", str(photos),
            "--output", str(output), "--weights", "random", *args.pipeline_args.split(),
        ]  # fmt: skip
        commands.append(Command(f"pipeline: {name}", argv, tree, output))
    return commands


def embedded(command: Command) -> str:
    """What the command's last run embedded, from its summary."""
    summary = json.loads((command.output / "summary.json").read_text())
    return f"{summary['embedded']} of {summary['rows_read']} rows"


def report(parts: list[Command], plain: Command, runs: list[Command], rounds: int) -> None:
    """Each command's seconds, then each pipeline's ratio to the plain script's run of the
    same round."""
    print(f"fresh processes, {rounds} interleaved rounds; wall seconds min / median / max")
    print(f"{'command':<52} {'min':>7} {'median':>7} {'max':>7}  CPU s (median)")
    for command in [*parts, plain, *runs]:
        cpu = statistics.median(command.cpus)
        print(f"{command.name:<52} {spread(command.walls)}  {cpu:7.2f}")
    print(f"\n{'pipeline / plain script, per round':<52} {'min':>7} {'median':>7} {'max':>7}")
    for command in runs:
        ratios = [a / b for a, b in zip(command.walls, plain.walls, strict=True)]
        print(f"{command.name:<52} {spread(ratios)}   ({embedded(command)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds; each runs every command")
    parser.add_argument(
        "--pipeline_args",
        default="",
        help="extra flags for the pipeline, e.g. '--engine tensorflow'",
    )
    parser.add_argument(
        "--revisions", nargs="*", default=[], metavar="REV",
        help="also time the pipeline at these git revisions, e.g. HEAD~3",
    )  # fmt: skip
    parser.add_argument(
        "--trees", nargs="*", type=Path, default=[], metavar="DIR",
        help="also time the pipeline package of these folders (a copy of the repository)",
    )  # fmt: skip
    parser.add_argument("--no_parts", action="store_true", help="skip the imports and build")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        photos = absolute_photos(work)
        parts = [] if args.no_parts else [
            Command(name, [sys.executable, "-c", code]) for name, code in PARTS.items()
        ]  # fmt: skip
        plain = Command(
            "plain script: Keras, 13 photos",
            [sys.executable, "-c", PLAIN_SCRIPT, str(photos), str(work / "plain.npy")],
        )
        runs = pipelines(args, work, photos)
        commands = [*parts, plain, *runs]
        for round_ in range(args.runs):
            # Each round starts one further along: no command always follows the same one.
            shift = round_ % len(commands)
            for command in commands[shift:] + commands[:shift]:
                command.run()
        report(parts, plain, runs, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
