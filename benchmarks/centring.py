"""Raw against mean-centred cosine similarity, on the 13 photographs and altered copies.

Each photograph gets five altered copies (JPEG quality 30, half size, 5% cropped off each
side, brightened by 1.2, an 8-pixel black border) and a byte-identical copy; one pipeline
run of --model (default resnet50; --weights random: no pretrained weights here) embeds all
91. For raw and for centred embeddings it prints how many images have their top neighbour
in their own photograph's family, and the range of similarities: a threshold needs the
two to spread apart.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from PIL import Image  # noqa: E402
from support import PHOTO_PATHS, altered_copies, parquet_embeddings, run_cli, write_csv  # noqa: E402


def make_families(root: Path) -> dict[str, str]:
    """uri -> the photograph it comes from, for the photographs and their copies."""
    families = {}
    for source in map(Path, PHOTO_PATHS):
        families[str(source)] = source.name
        with Image.open(source) as image:
            image.load()
        for suffix, (copy, params) in altered_copies(image).items():
            path = root / f"{source.stem}-{suffix}"
            copy.save(path, **params)
            families[str(path)] = source.name
        identical = root / f"copy-of-{source.name}"
        shutil.copyfile(source, identical)
        families[str(identical)] = source.name
    return families


def report(name: str, matrix: np.ndarray, photo: list[str]) -> None:
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, np.nan)
    top = np.nanargmax(similarities, axis=1)
    right = sum(photo[i] == photo[j] for i, j in enumerate(top))
    same = np.array(photo)[:, None] == np.array(photo)[None, :]
    print(
        f"{name:>8}: top neighbour from its own photograph {right}/{len(photo)}; similarities "
        f"{np.nanmin(similarities):.3f} to {np.nanmax(similarities):.3f}; highest between "
        f"different photographs {np.nanmax(np.where(same, np.nan, similarities)):.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50", help="any --model of the pipeline")
    model = parser.parse_args(argv).model
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "copies").mkdir()
        families = make_families(root / "copies")
        output = root / "out"
        done = run_cli(
            "--input", str(write_csv(root / "images.csv", list(families))),
            "--output", str(output),
            "--model", model, "--weights", "random",
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        embeddings = parquet_embeddings(output)
    uris = sorted(embeddings)
    matrix = np.stack([embeddings[uri] for uri in uris]).astype(np.float64)
    photo = [families[uri] for uri in uris]
    report("raw", matrix, photo)
    report("centred", matrix - matrix.mean(axis=0), photo)


if __name__ == "__main__":
    main()
