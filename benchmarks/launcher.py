"""Wall time and peak RSS of the Flex Template launch, run as Google's launcher runs it.

The launcher VM runs the image's FLEX_TEMPLATE_PYTHON_PY_FILE with DataflowRunner flags
and --template_location, and the job description it writes is what Dataflow starts.
Here that file runs the same way, against a GCS API emulator and a metadata-server
stand-in on loopback, with a ResNet50 weights file (the size of the ImageNet one) in the
emulated bucket as --weights. Each launch is a child process; its peak RSS comes from wait4.
See docs/performance.md, "The launch".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cloud import (  # noqa: E402  (the test helpers: emulator, stand-ins, launcher flags)
    BUCKET,
    MetadataServer,
    emulator_client,
    imported_packages,
    launcher_argv,
    launcher_environment,
    storage_emulator,
)


def save_weights(path: Path) -> None:
    """A ResNet50 weights file without top, as large as the ImageNet one (94 MB)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (
        "import keras, sys; keras.utils.set_random_seed(0); "
        "keras.applications.ResNet50(weights=None, include_top=False)"
        ".save_weights(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def launch(work: Path, weights: str, emulator: str, metadata: str, attempt: int) -> dict:
    """One launch in a child process: its wall time, peak RSS and whether TF was imported."""
    csv_path = work / "images.csv"
    csv_path.write_text("uri\n" + "\n".join(f"gs://{BUCKET}/photos/{i}.jpg" for i in range(3)))
    argv = launcher_argv(
        job_name=f"launch-benchmark-{attempt}",
        template_location=f"gs://{BUCKET}/staging/template_launches/{attempt}/job_object",
        # An output per launch: each launch leaves its job the output's lease.
        parameters={
            "input": str(csv_path),
            "output": f"gs://{BUCKET}/out/{attempt}",
            "weights": weights,
        },
    )
    env = launcher_environment(emulator, metadata)
    log = work / f"launch-{attempt}.log"
    started = time.perf_counter()
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", *argv],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        # wait4 rather than wait: it also gives the child's own peak RSS.
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"launch failed, see {log}:\n{text[-3000:]}")
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "tensorflow_imported": "tensorflow" in imported_packages(text),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="launches; the best is reported")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "benchmark-launcher")
    args = parser.parse_args(argv)
    weights = args.work / "resnet50.weights.h5"
    save_weights(weights)
    rows = []
    with storage_emulator(BUCKET) as emulator:
        # On gs://, as a remote run needs it: the launcher reads its layout from there.
        emulator_client(emulator).bucket(BUCKET).blob(weights.name).upload_from_filename(weights)
        remote_weights = f"gs://{BUCKET}/{weights.name}"
        metadata = MetadataServer()
        try:
            for attempt in range(args.runs):
                rows.append(launch(args.work, remote_weights, emulator, metadata.address, attempt))
        finally:
            metadata.close()
    for row in rows:
        print(
            f"launch: {row['seconds']:6.1f} s  peak RSS {row['peak_rss_mb']:6.0f} MB  "
            f"tensorflow imported: {row['tensorflow_imported']}"
        )
    best = min(rows, key=lambda row: row["seconds"])
    print(f"best of {len(rows)}: {best['seconds']:.1f} s, peak RSS {best['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
