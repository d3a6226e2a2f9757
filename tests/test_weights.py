"""Weights checked without building a model, against files and models Keras makes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from cloud import (
    BUCKET,
    LoopbackServer,
    MetadataServer,
    QuietHandler,
    emulator_client,
    launcher_environment,
    storage_emulator,
)
from support import PHOTO_PATHS, keras_backbone, run_cli, write_csv

from pipeline.models.backbones import APPLICATIONS, BACKBONES, ModelSpec, embedding_shape
from pipeline.models.weights import (
    ImagenetWeights,
    Layout,
    WeightsUnavailableError,
    cached_imagenet_path,
    check_weights_file,
    ensure_imagenet,
    read_layout,
)
from pipeline.run.preflight import check_weights


def save_legacy_h5(model, path: Path) -> None:
    """The format of keras.applications' own ImageNet files (Keras 3 saves it no more)."""
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)


@pytest.fixture(scope="module")
def resnet50_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = keras_backbone("resnet50")
    model.save_weights(folder / "resnet50.weights.h5")
    save_legacy_h5(model, folder / "resnet50.h5")
    other = keras_backbone("efficientnet_b0")
    other.save_weights(folder / "efficientnet.weights.h5")
    return folder


# slow for the deeper ResNets: each builds a full-size model (2-3 s); the others stay fast.
DEEP = ("resnet101", "resnet152")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in DEEP else n
        for n in sorted(n for n, b in BACKBONES.items() if b.library == APPLICATIONS)
    ],
)
def test_the_table_matches_the_model_keras_builds(name):
    model = keras_backbone(name)
    backbone = BACKBONES[name]
    shapes = [tuple(int(d) for d in w.shape) for w in model.weights]
    assert backbone.layout == Layout.of_shapes(shapes)
    assert tuple(model.output_shape[1:]) == embedding_shape(ModelSpec(name, "random", "none"))
    assert embedding_shape(ModelSpec(name, "random", "avg")) == (model.output_shape[-1],)
    assert embedding_shape(ModelSpec(name, "random", "max")) == (model.output_shape[-1],)


def test_both_keras_file_formats_read_as_the_models_layout(resnet50_files):
    expected = BACKBONES["resnet50"].layout
    assert read_layout(str(resnet50_files / "resnet50.weights.h5")) == expected
    assert read_layout(str(resnet50_files / "resnet50.h5")) == expected
    for name in ("resnet50.weights.h5", "resnet50.h5"):
        check_weights_file(str(resnet50_files / name), "resnet50", expected)


def test_a_file_of_another_model_is_refused_with_both_layouts(resnet50_files):
    path = str(resnet50_files / "efficientnet.weights.h5")
    with pytest.raises(WeightsUnavailableError) as refused:
        check_weights_file(path, "resnet50", BACKBONES["resnet50"].layout)
    message = str(refused.value)
    assert "does not fit resnet50" in message
    assert BACKBONES["resnet50"].layout.describe() in message
    assert BACKBONES["efficientnet_b0"].layout.describe() in message


def test_a_remote_run_refuses_a_weights_file_on_this_machine(resnet50_files):
    spec = ModelSpec("resnet50", str(resnet50_files / "resnet50.weights.h5"), "avg")
    check_weights(spec, local=True)
    with pytest.raises(WeightsUnavailableError, match="a remote run's workers cannot read"):
        check_weights(spec, local=False)


def test_unreadable_files_are_refused(resnet50_files, tmp_path):
    whole = (resnet50_files / "resnet50.weights.h5").read_bytes()
    (tmp_path / "truncated.weights.h5").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.weights.h5").write_text("not HDF5")
    for name in ("truncated.weights.h5", "text.weights.h5", "absent.weights.h5"):
        with pytest.raises(WeightsUnavailableError, match="cannot read --weights"):
            check_weights_file(str(tmp_path / name), "resnet50", BACKBONES["resnet50"].layout)


def test_a_gs_files_layout_is_read_through_beams_filesystem(resnet50_files):
    local = resnet50_files / "efficientnet.weights.h5"
    metadata = MetadataServer()  # credentials at once, as on a Dataflow worker
    try:
        with storage_emulator(BUCKET) as emulator:
            blob = emulator_client(emulator).bucket(BUCKET).blob("w/efficientnet.weights.h5")
            blob.upload_from_filename(local)
            code = (
                "from pipeline.models.weights import read_layout; "
                f"print(read_layout('gs://{BUCKET}/w/efficientnet.weights.h5'))"
            )
            env = launcher_environment(emulator, metadata.address)
            result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                    text=True, timeout=120)  # fmt: skip
    finally:
        metadata.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(read_layout(str(local)))
    assert result.stdout.strip() == str(BACKBONES["efficientnet_b0"].layout)


class FileServer(LoopbackServer):
    """Serves one file's bytes at every path, counting the requests."""

    def __init__(self, body: bytes):
        self.requests = 0
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                server.requests += 1
                self.reply(200, body, {"Content-Type": "application/octet-stream"})

        self.url = f"http://127.0.0.1:{self._start(Handler)}/"


# slow: Keras, in a process of its own, looks for the file (its import alone takes 4.5 s).
@pytest.mark.slow
def test_imagenet_weights_land_where_keras_looks_for_them(resnet50_files, tmp_path, monkeypatch):
    body = (resnet50_files / "resnet50.h5").read_bytes()
    md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
    server = FileServer(body)
    try:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        weights = ImagenetWeights(server.url, "resnet50_notop.h5", md5)
        path = ensure_imagenet("resnet50", weights)
        assert ensure_imagenet("resnet50", weights) == path  # cached: no second download
        assert server.requests == 1
    finally:
        server.close()
    assert Path(path).read_bytes() == body
    assert path == cached_imagenet_path(weights)
    # Keras, with the same KERAS_HOME and an origin it cannot reach, finds that file.
    code = (
        "import keras, sys; print(keras.utils.get_file(sys.argv[1], "
        "origin='http://127.0.0.1:9/unreachable', file_hash=sys.argv[2], cache_subdir='models'))"
    )
    result = subprocess.run([sys.executable, "-c", code, weights.file_name, md5],
                            env={**os.environ, "KERAS_HOME": str(tmp_path / "keras")},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == path


def test_a_download_with_the_wrong_hash_is_refused_and_not_cached(tmp_path, monkeypatch):
    server = FileServer(b"not the weights")
    try:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        weights = ImagenetWeights(server.url, "resnet50_notop.h5", "0" * 32)
        with pytest.raises(WeightsUnavailableError, match="cannot download the ImageNet weights"):
            ensure_imagenet("resnet50", weights)
    finally:
        server.close()
    assert os.listdir(tmp_path / "keras" / "models") == []


def test_an_unreachable_origin_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    weights = ImagenetWeights("http://127.0.0.1:9/", "resnet50_notop.h5", "0" * 32)
    with pytest.raises(WeightsUnavailableError) as refused:
        ensure_imagenet("resnet50", weights)
    assert "--weights PATH" in str(refused.value) and "--weights random" in str(refused.value)


def _network_reachable() -> bool:
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_imagenet_weights_offline_stop_the_run_with_one_clear_line(tmp_path):
    if _network_reachable():
        pytest.skip("the network is reachable here, so the offline error cannot be provoked")
    csv_path = write_csv(tmp_path / "one.csv", PHOTO_PATHS[:1])
    # An empty Keras cache: a weights file cached earlier must not hide the error.
    result = run_cli(
        "--input", str(csv_path), "--output", str(tmp_path / "out"),
        env={"KERAS_HOME": str(tmp_path / "keras")},
    )  # fmt: skip
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "ImageNet weights" in error_lines[0]
    assert "--weights PATH" in error_lines[0] and "--weights random" in error_lines[0]
    assert not (tmp_path / "out").exists()
