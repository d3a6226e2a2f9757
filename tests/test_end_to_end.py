"""The pipeline end to end on the local runner, on real photographs, via the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    JPEG_PHOTOS,
    PHOTO_PATHS,
    dead_letter,
    failed_run_record,
    keras_reference,
    make_awkward_images,
    make_bad_inputs,
    npy_embeddings,
    npy_index,
    parquet_embeddings,
    read_parquet,
    relative_error,
    run_cli,
    summary,
    write_csv,
)

from pipeline.outputs.naming import RUN_ID_PATTERN, npy_name

pytestmark = pytest.mark.pipeline_run

SEED = 3
PARITY_TOLERANCE = 1e-4


def reference_resnet50(weights=None):
    import keras

    keras.utils.set_random_seed(SEED)
    return keras.applications.ResNet50(
        weights=weights, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    awkward = make_awkward_images(root / "awkward")
    bad = make_bad_inputs(root / "bad")
    uris = [*PHOTO_PATHS, *awkward.values(), *(path for path, _ in bad.values())]
    # The same URI again, padded with whitespace, counts as a duplicate row.
    uris.append(f"  {PHOTO_PATHS[0]}  ")
    csv_path = write_csv(root / "images.csv", uris)
    with open(csv_path, "a") as handle:
        handle.write("\n   \n")  # blank lines are not rows
    return {"csv": csv_path, "awkward": awkward, "bad": bad, "rows": len(uris)}


@pytest.fixture(scope="module")
def parquet_run(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("parquet_run")
    result = run_cli(
        "--input", str(corpus["csv"]),
        "--output", str(output),
        "--weights", "random",
        "--seed", str(SEED),
        "--jpeg_draft", "false",
        "--max_failure_fraction", "0.5",
        "--precision", "float32",  # parity in full precision (auto may be bfloat16)
        "--json",
        as_user=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_every_row_is_accounted_for(corpus, parquet_run):
    output, _ = parquet_run
    got = summary(output)
    good = len(PHOTO_PATHS) + len(corpus["awkward"])
    assert got["rows_read"] == corpus["rows"]
    assert got["duplicates_dropped"] == 1
    assert got["embedded"] == good
    assert got["failed"] == len(corpus["bad"])
    assert got["failed_by_stage"] == {
        "read": 0,
        "load": len(corpus["bad"]),
        "extract": 0,
        "store": 0,
    }
    assert got["reconciled"] is True
    assert len(parquet_embeddings(output)) == good


def test_summary_is_printed_and_says_weights_are_random(parquet_run):
    output, result = parquet_run
    printed = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    metrics = printed.pop("metrics")  # a local run adds Beam's counters to what it prints
    assert printed == summary(output)
    assert metrics["images_embedded"] == printed["embedded"]
    assert metrics["failed_load"] == printed["failed_by_stage"]["load"]
    assert metrics["duplicates_dropped"] == printed["duplicates_dropped"]
    assert printed["pretrained"] is False
    assert "NOT pretrained" in printed["weights"]
    assert "NOT pretrained" in result.stderr


def test_embeddings_equal_keras_reference_with_seeded_weights(parquet_run):
    output, _ = parquet_run
    embeddings = parquet_embeddings(output)
    expected = keras_reference(reference_resnet50(), PHOTO_PATHS)
    errors = {path: relative_error(embeddings[path], expected[path]) for path in PHOTO_PATHS}
    assert max(errors.values()) <= PARITY_TOLERANCE, errors


def test_awkward_images_are_all_embedded(corpus, parquet_run):
    output, _ = parquet_run
    embeddings = parquet_embeddings(output)
    missing = [name for name, path in corpus["awkward"].items() if path not in embeddings]
    assert not missing
    for vector in embeddings.values():
        assert vector.shape == (2048,) and np.isfinite(vector).all()


def test_exif_rotated_image_embeds_like_the_upright_one(corpus, parquet_run):
    output, _ = parquet_run
    embeddings = parquet_embeddings(output)
    rotated = embeddings[corpus["awkward"]["exif_rotated.png"]]
    upright = embeddings[corpus["awkward"]["upright.png"]]
    assert relative_error(rotated, upright) <= PARITY_TOLERANCE


def test_bad_inputs_go_to_the_dead_letter_with_reasons(corpus, parquet_run):
    output, _ = parquet_run
    records = {record["uri"]: record for record in dead_letter(output)}
    assert len(records) == len(corpus["bad"])
    for path, error_type in corpus["bad"].values():
        record = records[path]
        assert record["stage"] == "load"
        assert record["error_type"] == error_type, record
        assert record["message"]
    assert "--max_image_pixels" in records[corpus["bad"]["bomb.png"][0]]["message"]


def test_parquet_columns_sizes_and_metadata(parquet_run):
    import pyarrow as pa

    output, _ = parquet_run
    table, files = read_parquet(output)
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 2048)
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert metadata["model"] == "resnet50"
    assert metadata["pooling"] == "avg"
    assert metadata["embedding_shape"] == "[2048]"
    assert "random" in metadata["weights"]
    sizes = {
        uri: (w, h)
        for uri, w, h in zip(
            table.column("uri").to_pylist(),
            table.column("width").to_pylist(),
            table.column("height").to_pylist(),
            strict=True,
        )
    }
    for path in PHOTO_PATHS:
        with Image.open(path) as image:
            assert sizes[path] == image.size
    assert not [f for f in os.listdir(output) if f.endswith(".partial")]
    assert files


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A weights file the test saves from a model it keeps as the reference."""
    import keras

    keras.utils.set_random_seed(11)
    model = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    model.save_weights(path)
    return path, model


@pytest.fixture(scope="module")
def colliding_inputs(tmp_path_factory):
    """Same base names in two folders, and names that differ only before the extension."""
    root = tmp_path_factory.mktemp("colliding")
    sources = {
        "a/cat.jpg": "chelsea.png",
        "b/cat.jpg": "coffee.png",
        "img.v1.jpg": "rocket.jpg",
        "img.v2.jpg": "astronaut.png",
    }
    paths = []
    for relative, source in sources.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(Path(PHOTO_PATHS[0]).parent / source) as image:
            image.convert("RGB").save(path, "JPEG", quality=92)
        paths.append(str(path))
    return paths


def run_npy(csv_path: Path, output: Path, weights: Path, *extra: str):
    return run_cli(
        "--input", str(csv_path),
        "--output", str(output),
        "--output_format", "npy",
        "--weights", str(weights),
        "--resize", "center_crop",
        "--jpeg_draft", "false",
        "--precision", "float32",  # parity in full precision (auto may be bfloat16)
        *extra,
        as_user=True,
    )  # fmt: skip


# The mode of runs over 150 rows: a bundle thread per core, sharing one model.
NPY_RUN_MODE = ("--direct_running_mode", "multi_threading")


@pytest.fixture(scope="module")
def npy_run(weights_file, colliding_inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("npy_run")
    csv_path = write_csv(root / "images.csv", [*PHOTO_PATHS, *colliding_inputs], header=False)
    output = root / "out"
    result = run_npy(csv_path, output, weights_file[0], *NPY_RUN_MODE)
    assert result.returncode == 0, result.stderr[-3000:]
    return csv_path, output


def test_embeddings_equal_keras_reference_with_weights_file(weights_file, npy_run):
    _, output = npy_run
    embeddings = npy_embeddings(output)
    expected = keras_reference(weights_file[1], PHOTO_PATHS, resize="center_crop")
    errors = {path: relative_error(embeddings[path], expected[path]) for path in PHOTO_PATHS}
    assert max(errors.values()) <= PARITY_TOLERANCE, errors


def test_npy_names_are_collision_free_and_documented(colliding_inputs, npy_run):
    _, output = npy_run
    index = npy_index(output)
    uris = [row["uri"] for row in index]
    assert sorted(uris) == sorted([*PHOTO_PATHS, *colliding_inputs])
    run_id = summary(output)["run_id"]
    assert all(row["file"] == f"{run_id}/{npy_name(row['uri'])}" for row in index)
    assert os.listdir(output / "embeddings") == [run_id]
    files = [f"{run_id}/{name}" for name in os.listdir(output / "embeddings" / run_id)]
    assert sorted(files) == sorted([*(row["file"] for row in index), f"{run_id}/metadata.json"])
    embeddings = npy_embeddings(output)
    a_cat, b_cat = colliding_inputs[:2]
    assert relative_error(embeddings[a_cat], embeddings[b_cat]) > 0.01


def without_run_id(names: list[str]) -> list[str]:
    return sorted(re.sub(rf"-{RUN_ID_PATTERN}-", "-RUN-", name) for name in names)


def npy_files(output: Path, run_id: str) -> dict[str, bytes]:
    folder = output / "embeddings" / run_id
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_a_rerun_writes_the_same_files_in_its_own_folder_and_removes_the_earlier(
    weights_file, npy_run, tmp_path
):
    csv_path, output = npy_run
    names_before = os.listdir(output)
    run_before = summary(output)["run_id"]
    arrays_before = npy_files(output, run_before)
    index_before = sorted(str(row).replace(run_before, "RUN") for row in npy_index(output))
    result = run_npy(csv_path, output, weights_file[0], *NPY_RUN_MODE)
    assert result.returncode == 0, result.stderr[-3000:]
    names_after = os.listdir(output)
    assert without_run_id(names_after) == without_run_id(names_before)
    assert set(names_after) != set(names_before), "shards carry the new run's id"
    run_after = summary(output)["run_id"]
    assert os.listdir(output / "embeddings") == [run_after]
    arrays_after = npy_files(output, run_after)
    metadata = "metadata.json"
    assert json.loads(arrays_after.pop(metadata))["run_id"] == run_after
    assert json.loads(arrays_before.pop(metadata))["run_id"] == run_before
    assert arrays_after == arrays_before
    assert sorted(str(row).replace(run_after, "RUN") for row in npy_index(output)) == index_before


def test_a_rerun_with_fewer_shards_removes_the_old_ones(tmp_path):
    csv_path = write_csv(tmp_path / "few.csv", PHOTO_PATHS[:4])
    output = tmp_path / "out"
    common = ("--input", str(csv_path), "--output", str(output), "--weights", "random")
    first = run_cli(*common, "--num_shards", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    _, files = read_parquet(output)
    assert len(files) == 3
    rows_before = {uri: v.tobytes() for uri, v in parquet_embeddings(output).items()}
    second = run_cli(*common, "--num_shards", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    _, files = read_parquet(output)
    assert len(files) == 1 and files[0].endswith("-00000-of-00001.parquet")
    rows_after = {uri: v.tobytes() for uri, v in parquet_embeddings(output).items()}
    assert rows_after.keys() == rows_before.keys()
    for uri in rows_before:
        assert (
            relative_error(
                np.frombuffer(rows_after[uri], np.float32),
                np.frombuffer(rows_before[uri], np.float32),
            )
            <= PARITY_TOLERANCE
        )


def test_too_many_failures_fail_the_run(tmp_path):
    missing = [str(tmp_path / f"missing-{i}.jpg") for i in range(3)]
    csv_path = write_csv(tmp_path / "mostly_missing.csv", [*PHOTO_PATHS[:2], *missing])
    output = tmp_path / "out"
    result = run_cli("--input", str(csv_path), "--output", str(output), "--weights", "random",
                     "--max_failures", "0")  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    [error] = [line for line in lines if line.startswith("error:")]
    assert "3 of 5 inputs failed" in error and "--max_failure_fraction 0.05" in error
    # The first failures by URI, each with its reason, and the command that lists them all.
    kept, failures = failed_run_record(output)
    first = sorted(failures, key=lambda record: record["uri"])[:3]
    assert [record["uri"] for record in first] == sorted(missing)
    assert lines[-4:-1] == [f"  {r['uri']}: {r['error_type']}: {r['message']}" for r in first]
    run_folder = output / "_runs" / kept["run_id"]
    assert lines[-1] == f"  list them all: cat {run_folder}/failures-*.jsonl"
    # Nothing is published: the failed run's summary and dead letter stay in its folder.
    assert not (output / "summary.json").exists() and not dead_letter(output)
    assert (kept["status"], kept["failure_fraction"]) == ("failed", 0.6)
    assert "3 of 5 inputs failed" in kept["failure_reason"]
    assert {record["uri"] for record in failures} == set(missing)


def test_glob_input_embeds_every_matching_file(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in JPEG_PHOTOS:
        shutil.copy(path, folder)
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(folder / "*.jpg"), "--output", str(output), "--weights", "random"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {str(folder / os.path.basename(p)) for p in JPEG_PHOTOS}
    assert set(parquet_embeddings(output)) == expected
