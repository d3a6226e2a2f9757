"""A gs:// preset folder holding an object whose name leaves the folder (`../../x`, which
Cloud Storage allows): refused with one line naming it by the launch, the workers' copy
and search-images, and nothing written outside the copy folder."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from cloud import ForeignNamesProxy, MetadataServer, emulator_client, storage_emulator
from forked import run_module
from support import PHOTO_PATHS, REPO, run_cli, write_csv
from test_hub_models import FAMILIES

from pipeline.common import UnsafeNameError, path_inside
from pipeline.models import ModelSpec, WeightsUnavailableError
from pipeline.models.hub import local_preset_copy
from pipeline.models.weights import local_copy
from pipeline.outputs import FORMATS

BUCKET = "hostile-presets"
MODEL = FAMILIES["dinov2"]
DOTDOT = "dotdot-placeholder"  # what the emulator holds for `..`
FOLDER = f"gs://{BUCKET}/presets/hostile"
# `../../escaped.txt` from the copy's partial folder, TMPDIR/presets/<made>-<random>,
# is TMPDIR/escaped.txt.
ESCAPING = f"{FOLDER}/../../escaped.txt"


def preset_files(folder: Path) -> Path:
    """A folder laid out as keras-hub's save_to_preset lays one out: what is refused here
    is refused by its names, before any file is read as a model."""
    folder.mkdir(parents=True)
    config = {"class_name": "DINOV2Backbone", "config": {"patch_size": 14}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metadata.json").write_text(json.dumps({"keras_version": "3"}))
    (folder / "model.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    return folder


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A valid tiny preset in the emulated bucket, plus one object named to escape."""
    preset = preset_files(tmp_path_factory.mktemp("preset") / "dinov2")
    metadata = MetadataServer()
    with storage_emulator(BUCKET) as emulator:
        bucket = emulator_client(emulator).bucket(BUCKET)
        for file in sorted(preset.iterdir()):
            bucket.blob(f"presets/hostile/{file.name}").upload_from_filename(str(file))
            bucket.blob(f"presets/good/{file.name}").upload_from_filename(str(file))
        # The Cloud Console's "Create folder" leaves a zero-byte object named "folder/".
        bucket.blob("presets/good/").upload_from_string(b"")
        name = f"presets/hostile/{DOTDOT}/{DOTDOT}/escaped.txt"
        bucket.blob(name).upload_from_string(b"written outside the copy\n")
        proxy = ForeignNamesProxy(emulator, {DOTDOT: ".."})
        # TINY_PRESET: the preset's local folder, for comparing copies (read by no program).
        yield {
            "STORAGE_EMULATOR_HOST": proxy.url,
            "TINY_PRESET": str(preset),
            **metadata.environment,
        }
        proxy.close()
    metadata.close()


def every_file(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line of an exit 2, which names the object."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert ESCAPING in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../../x", "a/./b", ".", "", "/etc/x", "a//b", "a/", "a\\..\\x", "a\x00b", "a\nb"],
)
def test_a_name_that_is_not_plain_segments_is_refused(name):
    with pytest.raises(UnsafeNameError) as raised:
        path_inside("/copy", name)
    assert repr(name) in str(raised.value) and "\n" not in str(raised.value)


def test_plain_names_stay_inside_the_folder():
    assert (
        path_inside("/copy", "assets/tokenizer/vocab.json") == "/copy/assets/tokenizer/vocab.json"
    )
    assert path_inside("/copy", "..config.json") == "/copy/..config.json"


def test_a_weights_path_that_ends_in_no_file_name_is_refused_before_any_copy(
    gcs, tmp_path, monkeypatch
):
    """local_copy names its copy after the path's last segment (Keras reads the suffix)."""
    for name, value in gcs.items():
        monkeypatch.setenv(name, value)  # so that a copy, were it tried, stays on loopback
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for path in (f"gs://{BUCKET}/weights/..", f"gs://{BUCKET}/weights/./"):
        with pytest.raises(WeightsUnavailableError, match="is no file name"):
            local_copy(path)
    assert list(tmp_path.iterdir()) == []


def test_the_proxy_lists_the_name_as_cloud_storage_would(gcs, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    for name, value in gcs.items():
        monkeypatch.setenv(name, value)
    [listed] = FileSystems.match([f"{FOLDER}/**escaped.txt"])
    assert [m.path for m in listed.metadata_list] == [ESCAPING]
    with FileSystems.open(ESCAPING) as handle:  # served by that name too
        assert handle.read() == b"written outside the copy\n"


@pytest.fixture
def on_a_worker(gcs, tmp_path, monkeypatch):
    """This process as a worker: the emulated bucket, and its temporary folder in tmp_path."""
    for name, value in gcs.items():
        monkeypatch.setenv(name, value)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))


def test_the_workers_copy_refuses_the_folder_and_writes_nothing(on_a_worker, tmp_path):
    with pytest.raises(WeightsUnavailableError) as raised:
        local_preset_copy(FOLDER)
    assert ESCAPING in str(raised.value) and "\n" not in str(raised.value)
    assert every_file(tmp_path) == []


def test_a_folder_placeholder_object_is_no_file_and_the_copy_is_whole(on_a_worker, gcs, tmp_path):
    copy = Path(local_preset_copy(f"gs://{BUCKET}/presets/good"))
    names = sorted(path.name for path in copy.iterdir())
    assert names == sorted(file.name for file in Path(gcs["TINY_PRESET"]).iterdir())
    assert every_file(tmp_path) == [str((copy / name).relative_to(tmp_path)) for name in names]


@pytest.mark.pipeline_run
def test_a_run_is_refused_before_any_work(gcs, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS[:2])),
        "--output", str(output), "--model", MODEL, "--weights", FOLDER,
        env={**gcs, "TMPDIR": str(temp)},
    )  # fmt: skip
    refusal(result)
    assert not output.exists()
    assert [name for name in every_file(tmp_path) if "escaped" in name] == []
    assert every_file(temp) == []


@pytest.mark.pipeline_run
def test_search_with_the_folder_in_its_summary_is_refused(gcs, tmp_path):
    """An output whose summary.json names the folder as its weights: the query's model
    loads through the same copy."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    output = tmp_path / "out"
    spec = ModelSpec.of(MODEL, FOLDER, "avg", 0)
    record = {
        "output_format": "parquet",
        "model": MODEL,
        "weights": spec.describe_weights(),
        "pooling": spec.pooling,
        "resize": spec.resize("squash").describe(),
        "jpeg_draft": False,
        "precision": "float32",
    }
    run = "20260101T000000-0a1b2c"
    shard = Path(
        FORMATS["parquet"].embedding_files(str(output)).replace("*", f"{run}-00000-of-00001")
    )
    shard.parent.mkdir(parents=True)
    shard.touch()  # search lists the shards before the model loads; this one is never read
    (output / "summary.json").write_text(json.dumps(record))
    result = run_module(
        "pipeline.search",
        [str(output), "--image", PHOTO_PATHS[0]],
        cwd=REPO,
        env={**os.environ, **gcs, "TMPDIR": str(temp)},
        timeout=600,
    )
    refusal(result)
    assert result.stdout == ""
    assert [name for name in every_file(tmp_path) if "escaped" in name] == []
    assert every_file(temp) == []
