"""Test inputs made from the real photographs, and readers for the pipeline's outputs."""

from __future__ import annotations

import csv
import functools
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from forked import run_module
from PIL import Image, ImageEnhance, ImageOps

if TYPE_CHECKING:
    from apache_beam.testing.test_pipeline import TestPipeline

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "photos"
PHOTO_PATHS = sorted(str(p) for p in PHOTOS.iterdir() if p.suffix in (".png", ".jpg"))
JPEG_PHOTOS = [p for p in PHOTO_PATHS if p.endswith(".jpg")]


def photo(name: str) -> Image.Image:
    with Image.open(PHOTOS / name) as image:
        image.load()
        return image


def make_awkward_images(directory: Path) -> dict[str, str]:
    """Valid but awkward images, each made from a real photograph; name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def save(name: str, image: Image.Image, **params) -> None:
        path = directory / name
        image.save(path, **params)
        made[name] = str(path)

    chelsea = photo("chelsea.png")
    astronaut = photo("astronaut.png")
    coffee = photo("coffee.png")
    camera = photo("camera.png")
    rocket = photo("rocket.jpg")
    retina = photo("retina.jpg")

    palette = chelsea.quantize(64)
    save("palette_transparent.png", palette, transparency=0)
    alpha = np.tile(np.linspace(0, 255, astronaut.width, dtype=np.uint8), (astronaut.height, 1))
    rgba = astronaut.copy()
    rgba.putalpha(Image.fromarray(alpha))
    save("rgba.png", rgba)
    gray_alpha = camera.convert("LA")
    gray_alpha.putalpha(Image.fromarray(alpha[: camera.height, : camera.width]))
    save("gray_alpha.png", gray_alpha)
    save("cmyk.jpg", coffee.convert("CMYK"), quality=95)
    sixteen = (np.asarray(camera, dtype=np.uint16) * 257).astype(np.uint16)
    save("gray16.png", Image.fromarray(sixteen))
    save("bilevel.png", camera.convert("1"))
    save("upright.png", chelsea)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    save("exif_rotated.png", chelsea.transpose(Image.Transpose.ROTATE_90), exif=exif)
    save("progressive.jpg", rocket, progressive=True, quality=90)
    frames = [f.convert("P") for f in (astronaut, coffee.resize((512, 512)), camera.convert("RGB"))]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("photo.webp", chelsea, quality=90)
    plain_rocket = Image.fromarray(np.asarray(rocket))  # without its JPEG-only info
    save("multipage.tiff", coffee, save_all=True, append_images=[plain_rocket])
    save("one_pixel.png", chelsea.resize((1, 1)))
    save("wide.png", retina.crop((0, 700, 1411, 710)))
    save("tall.png", retina.crop((700, 0, 707, 1411)))
    return made


def write_bomb(path: Path, side: int = 12_000) -> None:
    """A real decompression bomb: a valid grayscale PNG of side x side black pixels."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))


def make_bad_inputs(directory: Path) -> dict[str, tuple[str, str]]:
    """Inputs that must land in the dead letter; name -> (path, expected error_type)."""
    directory.mkdir(parents=True, exist_ok=True)
    rocket = (PHOTOS / "rocket.jpg").read_bytes()
    (directory / "truncated.jpg").write_bytes(rocket[: len(rocket) // 2])
    (directory / "empty.jpg").write_bytes(b"")
    (directory / "text.jpg").write_text("this is a text file, not a JPEG\n")
    write_bomb(directory / "bomb.png")
    return {
        "truncated.jpg": (str(directory / "truncated.jpg"), "OSError"),
        "empty.jpg": (str(directory / "empty.jpg"), "UnidentifiedImageError"),
        "text.jpg": (str(directory / "text.jpg"), "UnidentifiedImageError"),
        "missing.jpg": (str(directory / "missing.jpg"), "FileNotFoundError"),
        "bomb.png": (str(directory / "bomb.png"), "DecompressionBombError"),
    }


def write_csv(path: Path, uris: list[str], header: bool = True) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(["uri", "note"])
        for uri in uris:
            writer.writerow([uri, "x"] if header else [uri])
    return path


def local_pipeline() -> TestPipeline:
    """A TestPipeline that runs as a local run does: FnApiRunner, in this process.

    TestPipeline would also rebuild the pipeline from its runner-API proto and run that
    copy; beam.Pipeline skips that round trip for FnApiRunner, and so does a local run.
    It costs about a third of a many-step pipeline's time (the near-duplicate rounds).
    The runner still executes the proto, so every DoFn is pickled and unpickled.
    """
    from apache_beam.testing.test_pipeline import TestPipeline

    pipeline = TestPipeline(runner="FnApiRunner")
    pipeline.not_use_test_runner_api = True
    return pipeline


# A run that names no --engine runs on TensorFlow here (unless it asks for a precision
# only OpenVINO computes): OpenVINO's conversion takes about 3.4 s of a 13-photo run's
# 13 s and proves nothing about files, leases, publishing or search. The engines have
# tests of their own (test_engine.py, test_int8.py), and the runs that stand for a
# user's (as_user) take the command's own default, auto.
ENGINE_UNLESS_NAMED = ("--engine", "tensorflow")
OPENVINO_PRECISIONS = ("bfloat16", "int8")


def run_cli(
    *args: str, env: dict[str, str] | None = None, as_user: bool = False
) -> subprocess.CompletedProcess:
    """python -m pipeline ARGS from the repository root, in a child of a preloaded
    interpreter (forked.run_module), on ENGINE_UNLESS_NAMED unless ARGS name an engine or
    an OpenVINO precision; as_user runs the command exactly as a user does, in a fresh
    interpreter on the command's own engine."""
    precision = args[args.index("--precision") + 1] if "--precision" in args else ""
    named = "--engine" in args or precision in OPENVINO_PRECISIONS
    engine = () if as_user or named else ENGINE_UNLESS_NAMED
    environment = {**os.environ, **(env or {})}
    if as_user:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
    return run_module("pipeline", [*args, *engine], cwd=REPO, env=environment, timeout=600)


def read_parquet(output: Path):
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(output / "embeddings" / "embeddings-*.parquet")))
    return pq.ParquetDataset(files).read(), files


def parquet_embeddings(output: Path) -> dict[str, np.ndarray]:
    table, _ = read_parquet(output)
    uris = table.column("uri").to_pylist()
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy()
    return dict(zip(uris, vectors.reshape(len(uris), -1), strict=True))


def npy_index(output: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted(glob.glob(str(output / "embeddings-index-*.csv"))):
        with open(path, newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def npy_embeddings(output: Path) -> dict[str, np.ndarray]:
    return {row["uri"]: np.load(output / "embeddings" / row["file"]) for row in npy_index(output)}


def dead_letter(output: Path) -> list[dict[str, str]]:
    records = []
    for path in sorted(glob.glob(str(output / "failures-*.jsonl"))):
        with open(path) as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return records


def summary(output: Path) -> dict:
    return json.loads((output / "summary.json").read_text())


def many_photos(directory: Path, count: int) -> list[str]:
    """count distinct URIs: hard links to the photographs, in turn."""
    directory.mkdir()
    paths = []
    for index in range(count):
        source = PHOTO_PATHS[index % len(PHOTO_PATHS)]
        path = directory / f"{index:03d}-{os.path.basename(source)}"
        os.link(source, path)
        paths.append(str(path))
    return paths


def failed_run_record(output: Path) -> tuple[dict, list[dict]]:
    """A failed run's summary and dead letter, which its own folder _runs/RUN/ keeps."""
    [kept] = glob.glob(str(output / "_runs" / "*" / "summary.json"))
    failures = []
    for path in glob.glob(str(Path(kept).parent / "failures-*.jsonl")):
        with open(path) as handle:
            failures += [json.loads(line) for line in handle if line.strip()]
    return json.loads(Path(kept).read_text()), failures


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root: its path relative to root -> SHA-256 of its bytes."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected||: one number per embedding."""
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# The seed of the Keras backbones the tests build: one build per model serves them all.
BACKBONE_SEED = 5


@functools.cache
def keras_backbone(model_name: str):
    """Keras's own model for a BACKBONES entry, without top or pooling, on random weights
    seeded with BACKBONE_SEED; built once per test process (a second or more each)."""
    import keras

    from pipeline.models.backbones import BACKBONES

    keras.utils.set_random_seed(BACKBONE_SEED)
    constructor = getattr(keras.applications, BACKBONES[model_name].class_name)
    return constructor(weights=None, include_top=False, input_shape=(224, 224, 3), pooling=None)


def keras_reference(model, paths: list[str], resize: str = "squash") -> dict[str, np.ndarray]:
    """Keras's own path: load_img -> the same resize -> preprocess_input -> predict."""
    import keras

    batch = np.stack(
        [
            keras.utils.img_to_array(
                keras.utils.load_img(
                    path,
                    target_size=(224, 224),
                    interpolation="bilinear",
                    keep_aspect_ratio=resize == "center_crop",
                )
            )
            for path in paths
        ]
    )
    outputs = model.predict(keras.applications.resnet50.preprocess_input(batch), verbose=0)
    return dict(zip(paths, outputs, strict=True))


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pipeline_flags() -> dict:
    """The pipeline's own flags (--name -> argparse action), from their one declaration."""
    import argparse

    from pipeline.options import EmbeddingOptions

    parser = argparse.ArgumentParser(add_help=False)
    EmbeddingOptions._add_argparse_args(parser)
    return {action.option_strings[0]: action for action in parser._actions}


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode in ("RGB", "L") else image.convert("RGB")


def shared_folder(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder that every test process of this session shares, made once by make(folder)
    in the first process that asks, under a lock (pytest-xdist's workers keep their
    folders in one session folder). Its contents must not depend on the process."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


def altered_copies(image: Image.Image) -> dict[str, tuple[Image.Image, dict]]:
    """Name suffix -> (altered image, save parameters). Lossless PNG except the JPEG copy,
    so that each copy differs from its photograph by one alteration only."""
    width, height = image.size
    dx, dy = round(width * 0.05), round(height * 0.05)
    return {
        "jpeg30.jpg": (_rgb(image), {"quality": 30}),
        "half.png": (image.resize((width // 2, height // 2), Image.Resampling.LANCZOS), {}),
        "crop.png": (image.crop((dx, dy, width - dx, height - dy)), {}),
        "bright.png": (ImageEnhance.Brightness(image).enhance(1.2), {}),
        "border.png": (ImageOps.expand(image, border=8, fill=0), {}),
    }


def summary_on_gcs(client, bucket: str, prefix: str) -> dict:
    return json.loads(client.bucket(bucket).blob(f"{prefix}/summary.json").download_as_bytes())


def embeddings_table(
    uris: list[str], vectors: np.ndarray, sizes, run_id: str, model: str, columns=None
):
    """Rows as the pipeline's Parquet sink makes them (parquet_row, parquet_schema), with
    columns (RowColumns; none extra by default)."""
    import pyarrow as pa

    from pipeline.common.records import ImageKey
    from pipeline.outputs.columns import NO_EXTRA_COLUMNS
    from pipeline.outputs.sinks import parquet_row, parquet_schema

    columns = columns or NO_EXTRA_COLUMNS
    rows = [
        parquet_row((ImageKey(uri, int(width), int(height)), vector), columns, model, run_id)
        for uri, vector, (width, height) in zip(uris, vectors, sizes, strict=True)
    ]
    schema = parquet_schema((vectors.shape[1],), {"model": model}, columns)
    return pa.Table.from_pylist(rows, schema=schema)


def read_neighbors(output: Path) -> dict[str, tuple[list[str], list[float]]]:
    """neighbors-*.parquet by URI: (neighbour URIs, similarities); each URI has one row."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(output / "neighbors-*.parquet")))
    assert files, "no neighbours were written"
    rows = pq.read_table(files).to_pylist()
    assert len({row["uri"] for row in rows}) == len(rows), "an image has two rows"
    return {row["uri"]: (row["neighbors"], row["similarities"]) for row in rows}


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """numpy's reference: cosine similarities of the mean-centred vectors, float64."""
    centred = vectors.astype(np.float64) - vectors.astype(np.float64).mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    return unit @ unit.T


def centred_cosines(embeddings: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """The URIs in order and cosine_matrix of their embeddings."""
    uris = sorted(embeddings)
    return uris, cosine_matrix(np.stack([embeddings[uri] for uri in uris]))
