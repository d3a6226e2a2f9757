"""CLIP, SigLIP 2 and DINOv2 through the CLI: tiny presets that the tests save, against
keras-hub's own backbone on a reference preprocessing written here from each model's
cited transform."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from cloud import MetadataServer, emulator_client, storage_emulator
from PIL import Image, ImageOps
from support import (
    PHOTO_PATHS,
    dead_letter,
    npy_embeddings,
    parquet_embeddings,
    read_neighbors,
    read_parquet,
    relative_error,
    run_cli,
    summary,
    write_csv,
)

from pipeline.models import BACKBONES

pytestmark = pytest.mark.pipeline_run

BUCKET = "preset-bucket"


def tiny_preset(family: str, folder: Path) -> Path:
    """A two-layer, narrow backbone of the family, saved by keras-hub's save_to_preset,
    with the patch and image size of the table's line (the rest is free)."""
    import keras
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed({"clip": 1, "siglip": 2, "dinov2": 3}[family])
    small = dict(hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)
    if family == "clip":
        backbone = models.CLIPBackbone(
            models.CLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **small),
            models.CLIPTextEncoder(vocabulary_size=64, embedding_dim=32, **small),
            projection_dim=24,
        )
    elif family == "siglip":
        backbone = models.SigLIPBackbone(
            models.SigLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **small),
            models.SigLIPTextEncoder(
                vocabulary_size=64, embedding_dim=32, max_sequence_length=8, projection_dim=32,
                **small,
            ),
        )  # fmt: skip
    else:
        backbone = models.DINOV2Backbone(
            patch_size=14, image_shape=(224, 224, 3), position_embedding_shape=(518, 518),
            **small,
        )  # fmt: skip
    backbone.save_to_preset(str(folder))
    return folder


FAMILIES = {
    "clip": "clip_vit_base_patch16",
    "siglip": "siglip2_base_patch16_224",
    "dinov2": "dinov2_small",
}


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {family: tiny_preset(family, root / family) for family in FAMILIES}


def upright(path: str) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def shorter_side_then_centre(image: Image.Image, shorter: int, crop: int) -> np.ndarray:
    """torchvision's Resize(shorter, BICUBIC) then CenterCrop(crop) on a PIL image, as
    OpenAI CLIP (clip/clip.py _transform) and DINOv2 (dinov2/data/transforms.py,
    make_classification_eval_transform) apply them."""
    width, height = image.size
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    resized = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    # torchvision: int(round(...)); Python's round halves to even, as there.
    top = round((resized.shape[0] - crop) / 2.0)
    left = round((resized.shape[1] - crop) / 2.0)
    return resized[top : top + crop, left : left + crop]


def reference_pixels(model: str, path: str) -> np.ndarray:
    """The float input each model was trained on, from the original transforms."""
    image = upright(path)
    if model.startswith("clip"):
        pixels = shorter_side_then_centre(image, 224, 224) / 255.0
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
        return ((pixels - mean) / std).astype(np.float32)
    if model.startswith("dinov2"):
        pixels = shorter_side_then_centre(image, 256, 224) / 255.0
        return ((pixels - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)).astype(np.float32)
    # SigLIP 2: bilinear squash (the HF processor's resample 2), then x / 127.5 - 1.
    pixels = np.asarray(image.resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float64)
    return (pixels / 127.5 - 1.0).astype(np.float32)


def reference_embeddings(model: str, preset: Path, paths: list[str]) -> dict[str, np.ndarray]:
    """keras-hub's own backbone from the same preset, on the reference pixels."""
    import keras_hub

    line = BACKBONES[model]
    backbone = getattr(keras_hub.models, line.class_name).from_preset(str(preset))
    batch = np.stack([reference_pixels(model, path) for path in paths])
    if line.embedding == "cls_token":
        vectors = np.asarray(backbone({"images": batch}))[:, 0]
    else:
        vectors = np.array(backbone.get_vision_embeddings(batch))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return dict(zip(paths, vectors, strict=True))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_tiny_preset_embeds_as_keras_hub_does_on_the_original_preprocessing(
    family, presets, tmp_path
):
    model = FAMILIES[family]
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
        "--output", str(output), "--model", model, "--weights", str(presets[family]),
        "--jpeg_draft", "false", "--precision", "float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    embeddings = parquet_embeddings(output)
    expected = reference_embeddings(model, presets[family], PHOTO_PATHS)
    assert set(embeddings) == set(expected)
    for path, vector in embeddings.items():
        assert relative_error(vector, expected[path]) <= 1e-4, path
    line = BACKBONES[model]
    if line.normalised:
        norms = np.linalg.norm(np.stack(list(embeddings.values())), axis=1)
        assert np.allclose(norms, 1.0, atol=1e-5)
    made = summary(output)
    assert (made["model"], made["weights"], made["pooling"]) == (
        model,
        str(presets[family]),
        line.pooling,
    )
    assert made["resize"] == line.resize.describe()
    assert made["embedding_shape"] == [expected[PHOTO_PATHS[0]].shape[0]]
    metadata = read_parquet(output)[0].schema.metadata
    assert metadata[b"model"].decode() == model
    assert metadata[b"pooling"].decode() == line.pooling


def test_a_clip_preset_to_npy_gives_the_same_embeddings(presets, tmp_path):
    model = FAMILIES["clip"]
    output = tmp_path / "npy"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
        "--output", str(output), "--output_format", "npy", "--model", model,
        "--weights", str(presets["clip"]), "--jpeg_draft", "false", "--precision", "float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = reference_embeddings(model, presets["clip"], PHOTO_PATHS)
    embeddings = npy_embeddings(output)
    assert set(embeddings) == set(expected)
    for path, vector in embeddings.items():
        assert relative_error(vector, expected[path]) <= 1e-4, path


def test_a_preset_folder_on_gcs_and_an_output_there(presets, tmp_path):
    """The preset folder is read through Beam's FileSystems from the emulated bucket."""
    model = FAMILIES["dinov2"]
    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            bucket = emulator_client(emulator).bucket(BUCKET)
            for file in sorted(presets["dinov2"].iterdir()):
                bucket.blob(f"presets/dinov2/{file.name}").upload_from_filename(str(file))
            env = {"STORAGE_EMULATOR_HOST": emulator, **metadata.environment}
            result = run_cli(
                "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
                "--output", f"gs://{BUCKET}/out", "--model", model,
                "--weights", f"gs://{BUCKET}/presets/dinov2", "--jpeg_draft", "false",
                "--precision", "float32", env=env,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            local = tmp_path / "out"
            for blob in bucket.client.list_blobs(BUCKET, prefix="out/"):
                target = local / blob.name[len("out/") :]
                target.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(target)
    finally:
        metadata.close()
    expected = reference_embeddings(model, presets["dinov2"], PHOTO_PATHS)
    embeddings = parquet_embeddings(local)
    assert set(embeddings) == set(expected)
    for path, vector in embeddings.items():
        assert relative_error(vector, expected[path]) <= 1e-4, path
    assert dead_letter(local) == []


@pytest.mark.parametrize("family", ["clip", "dinov2"])
def test_neighbours_and_duplicates_of_a_hub_model_find_the_exact_copies(family, presets, tmp_path):
    """Byte-identical copies of a photo embed identically, so each is the other's nearest
    neighbour at similarity 1 and they form one near-duplicate group."""
    copies = tmp_path / "copies"
    copies.mkdir()
    uris = list(PHOTO_PATHS)
    for path in PHOTO_PATHS[:3]:
        copy = copies / f"copy-{os.path.basename(path)}"
        copy.write_bytes(Path(path).read_bytes())
        uris.append(str(copy))
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", uris)),
        "--output", str(output), "--model", FAMILIES[family],
        "--weights", str(presets[family]), "--neighbors", "3",
        "--duplicate_threshold", "0.9999",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    nearest = {
        uri: (found[0], scores[0]) for uri, (found, scores) in read_neighbors(output).items()
    }
    for path in PHOTO_PATHS[:3]:
        copy = str(copies / f"copy-{os.path.basename(path)}")
        assert nearest[path][0] == copy and nearest[path][1] == pytest.approx(1.0, abs=1e-5)
        assert nearest[copy][0] == path
    groups: dict[str, set[str]] = {}
    for file in sorted(output.glob("duplicates-*.csv")):
        with open(file, newline="") as handle:
            for row in csv.DictReader(handle):
                groups.setdefault(row["group"], set()).add(row["uri"])
    expected = {
        frozenset({path, str(copies / f"copy-{os.path.basename(path)}")})
        for path in PHOTO_PATHS[:3]
    }
    assert {frozenset(members) for members in groups.values()} == expected
