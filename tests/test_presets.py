"""Presets baked into the image: templates/bake_presets.py fills the folder from keras-hub's
own download, and the launcher refuses a keras-hub model the image does not hold."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cloud import (
    BUCKET,
    MetadataServer,
    emulator_client,
    launcher_argv,
    launcher_environment,
    storage_emulator,
)
from support import REPO
from test_model_table import small_preset

from pipeline.models import BACKBONES, BAKED_PRESETS, KERAS_HUB, WeightsUnavailableError
from pipeline.run.preflight import check_pretrained_preset

BAKE = REPO / "templates" / "bake_presets.py"


def kagglehub_cache(root: Path, handle: str, preset: Path) -> None:
    """preset laid out in root as kagglehub 1.0.2 leaves a downloaded model version, so that
    kagglehub.model_download(handle) returns it without asking Kaggle.

    kagglehub/cache.py: the files go in models/<owner>/<model>/<framework>/<variation>/
    <version>/ (_get_model_path), and the download counts only beside the marker file
    <version>.complete next to that folder (_get_models_completion_marker_filepath,
    Cache.load_from_cache); ModelHttpResolver._resolve returns a cached versioned handle
    before it builds any request (kagglehub/http_resolver.py).
    """
    owner, model, framework, variation, version = handle.removeprefix("kaggle://").split("/")
    parent = root / "models" / owner / model / framework / variation
    shutil.copytree(preset, parent / version)
    (parent / f"{version}.complete").touch()


def closed_port() -> int:
    """A loopback port nothing listens on: a proxy there refuses every connection."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_environment(cache: Path) -> dict[str, str]:
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("no_proxy", "NO_PROXY", BAKED_PRESETS)}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "KAGGLEHUB_CACHE": str(cache),
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "https_proxy": proxy,
        "http_proxy": proxy,
    }


def bake(folder: Path, models: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BAKE), str(folder), models], cwd=REPO,
        env=offline_environment(cache), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def dinov2_preset(tmp_path_factory) -> Path:
    return small_preset(tmp_path_factory.mktemp("dinov2") / "preset")


# slow: the bake script's process imports TensorFlow and keras-hub and loads the preset.
@pytest.mark.slow
def test_bake_copies_the_downloaded_preset_and_fails_on_one_it_cannot_download(
    dinov2_preset, tmp_path
):
    cache = tmp_path / "kagglehub"
    kagglehub_cache(cache, BACKBONES["dinov2_small"].preset, dinov2_preset)
    presets = tmp_path / "presets"
    # The Dockerfile passes PRESETS as one word; CLIP is not in the cache, and the proxy
    # refuses its download.
    result = bake(presets, "dinov2_small clip_vit_base_patch16", cache)

    baked = presets / "dinov2_small"
    for name in ("config.json", "metadata.json", "model.weights.h5"):
        assert (baked / name).read_bytes() == (dinov2_preset / name).read_bytes(), name
    # Loaded once by keras-hub as the workers load it: the small preset's own parameters.
    assert "baked dinov2_small into" in result.stdout
    assert "37,776 parameters" in result.stdout
    assert result.returncode == 1
    [line] = error_lines(result)
    handle = BACKBONES["clip_vit_base_patch16"].preset
    assert line.startswith(
        f"error: cannot download the preset of clip_vit_base_patch16 ({handle}: ProxyError"
    ), result.stderr[-2000:]
    assert sorted(os.listdir(presets)) == ["dinov2_small"]  # nothing half-copied


def test_bake_refuses_a_name_that_is_not_a_keras_hub_model_before_any_download(tmp_path):
    result = bake(tmp_path / "presets", "dinov2_small,resnet50 dinov3_huge", tmp_path / "cache")
    assert result.returncode == 2
    [line] = error_lines(result)
    hub_models = [name for name, entry in BACKBONES.items() if entry.library == KERAS_HUB]
    assert line == (
        "error: PRESETS names resnet50 (a keras.applications model, whose weights are not a "
        "preset), dinov3_huge (not in the table); it takes keras-hub models of "
        f"pipeline/models/backbones.py: {', '.join(hub_models)}"
    )
    assert not (tmp_path / "presets").exists()
    assert not (tmp_path / "cache").exists()  # kagglehub was never asked


def launch(model: str, presets: Path, job_object: str) -> tuple[subprocess.CompletedProcess, dict]:
    """templates/main.py as the launcher runs it in the image; the blobs it left."""
    parameters = {
        "input": f"gs://{BUCKET}/lists/photos.csv",
        "output": f"gs://{BUCKET}/embeddings/{model}",
        "model": model,
        "weights": "pretrained",
    }
    with storage_emulator(BUCKET) as emulator:
        metadata = MetadataServer()
        try:
            client = emulator_client(emulator)
            client.bucket(BUCKET).blob("lists/photos.csv").upload_from_string("uri\n")
            argv = launcher_argv("embed-test", f"gs://{BUCKET}/{job_object}", parameters)
            env = {**launcher_environment(emulator, metadata.address), BAKED_PRESETS: str(presets)}
            result = subprocess.run([sys.executable, *argv], cwd=REPO, env=env,
                                    capture_output=True, text=True, timeout=300)  # fmt: skip
            blobs = {b.name: b.download_as_bytes() for b in client.list_blobs(BUCKET)}
        finally:
            metadata.close()
    return result, blobs


# slow: a fresh launcher process builds and stages the whole job graph.
@pytest.mark.slow
def test_the_launcher_refuses_a_keras_hub_model_the_image_does_not_hold(dinov2_preset, tmp_path):
    presets = tmp_path / "presets"
    shutil.copytree(dinov2_preset, presets / "dinov2_small")
    job_object = "staging/job_object"

    refused, left = launch("clip_vit_base_patch16", presets, job_object)
    assert refused.returncode == 2
    [line] = [line for line in refused.stderr.splitlines() if line.strip()]
    assert line == (
        f"error: --model clip_vit_base_patch16 is not baked into this image (its presets are "
        f"in {presets}); rebuild the image with clip_vit_base_patch16 in the PRESETS build "
        "argument (cloudbuild.yaml: _PRESETS), or give --weights a gs:// preset folder"
    )
    assert job_object not in left and not any(n.startswith("embeddings/") for n in left)

    launched, left = launch("dinov2_small", presets, job_object)
    assert launched.returncode == 0, launched.stderr[-3000:]
    options = json.loads(left[job_object])["environment"]["sdkPipelineOptions"]["options"]
    assert (options["model"], options["weights"]) == ("dinov2_small", "pretrained")


def test_the_docs_size_table_is_the_model_tables_parameters_in_float32(monkeypatch, tmp_path):
    page = (REPO / "docs" / "dataflow.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,.]+ M \| ~[\d,]+ MB) \|$", page, re.MULTILINE))
    hub_models = [name for name, entry in BACKBONES.items() if entry.library == KERAS_HUB]
    assert list(rows) == hub_models
    for name, row in rows.items():
        parameters = BACKBONES[name].parameters
        assert row == f"{parameters / 1e6:,.1f} M | ~{round(parameters * 4 / 1e6):,} MB", name
    # The refusal the page quotes is the launcher's own line.
    monkeypatch.setenv(BAKED_PRESETS, "/opt/presets")
    with pytest.raises(WeightsUnavailableError) as refused:
        check_pretrained_preset("clip_vit_large_patch14", local=False)
    assert f"\nerror: {refused.value}\n" in page
