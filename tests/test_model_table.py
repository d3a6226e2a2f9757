"""The model table: each keras-hub line is the real architecture, and what a run refuses
about models and weights before any work."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from support import REPO, run_cli, write_csv

from pipeline.models import BACKBONES, KERAS_HUB, ModelSpec, embedding_shape

HUB_MODELS = sorted(name for name, line in BACKBONES.items() if line.library == KERAS_HUB)

# The published parameter counts (keras-hub's presets; DINOv2 at its native 518, where
# keras-hub keeps the 518 position embeddings beside the interpolated ones).
PUBLISHED = {
    "clip_vit_base_patch16": 149_620_934,
    "clip_vit_large_patch14": 427_616_770,
    "siglip2_base_patch16_224": 375_188_230,
    "siglip2_so400m_patch14_384": 1_136_009_291,
    "dinov2_small": 22_582_656,
    "dinov2_base": 87_632_640,
}
EMBEDDING_SIZES = {
    "clip_vit_base_patch16": 512,
    "clip_vit_large_patch14": 768,
    "siglip2_base_patch16_224": 768,
    "siglip2_so400m_patch14_384": 1152,
    "dinov2_small": 384,
    "dinov2_base": 768,
}


def test_the_table_names_the_six_keras_hub_models_with_their_sizes():
    assert sorted(PUBLISHED) == HUB_MODELS
    for name in HUB_MODELS:
        line = BACKBONES[name]
        assert line.parameters == PUBLISHED[name], name
        assert line.embedding_size == EMBEDDING_SIZES[name], name
        assert line.architecture.get(line.embedding_size_at) == line.embedding_size, name
        assert embedding_shape(ModelSpec.of(name, "random", "avg", 0)) == (line.embedding_size,)
        assert line.text_tower == (not name.startswith("dinov2")), name
        assert line.resize.size == line.input_size, name


# Builds keras-hub lines from the table and prints each one's parameters and embedding
# shape, in a process of its own. Inside a StatelessScope that does not initialise them,
# Keras creates each variable with its shape and no value: the architecture and its
# parameter count are the published ones, and no 1.1-billion-parameter model is held
# (all six in 1 s and under 1 GB, where initialised weights took 53 s and three processes).
_BUILD_LINES = """
import json, sys
import keras
from pipeline.models import BACKBONES
from pipeline.models.hub import EMBEDDINGS, build

built = {}
for name in sys.argv[1:]:
    line = BACKBONES[name]
    with keras.StatelessScope(initialize_variables=False):
        backbone = build(line.architecture)
        shape = "vision_encoder.image_shape" if line.text_tower else "image_shape"
        size = line.architecture.get(shape)
        embedding = EMBEDDINGS[line.embedding](backbone, keras.Input(tuple(size)))
    built[name] = {"parameters": backbone.count_params(), "shape": list(embedding.shape)}
    keras.backend.clear_session()
print(json.dumps(built))
"""


@pytest.fixture(scope="module")
def built_lines() -> dict[str, dict]:
    """name -> what the building process printed, every keras-hub line built once."""
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_LINES, *HUB_MODELS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", HUB_MODELS)
def test_each_line_builds_the_published_architecture(name, built_lines):
    """Built from the table with random weights: the published parameter count and the
    embedding size the table gives."""
    built = built_lines[name]
    line = BACKBONES[name]
    assert built["parameters"] == line.parameters
    assert built["shape"] == [None, line.embedding_size]


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    """python -m pipeline, as a user runs it: a fresh interpreter, all it prints checked."""
    csv = write_csv(tmp_path / "one.csv", ["tests/data/photos/chelsea.png"])
    args = ("--input", str(csv), "--output", str(tmp_path / "out"), *args)
    return run_cli(*args, env=env, as_user=True)


class Finished(NamedTuple):
    returncode: int
    stderr: str


def cli_here(tmp_path: Path, capsys, *args: str) -> Finished:
    """The command line's main() in this process: the same checks and messages, without
    an interpreter's start-up per case (cli runs one case in its own process)."""
    from pipeline.cli import main

    csv = write_csv(tmp_path / "one.csv", ["tests/data/photos/chelsea.png"])
    capsys.readouterr()
    code = main(["--input", str(csv), "--output", str(tmp_path / "out"), *args])
    return Finished(code, capsys.readouterr().err)


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_name_that_is_not_a_model_lists_the_models(tmp_path, capsys):
    result = cli_here(tmp_path, capsys, "--model", "clip_vit_base_patch32")
    assert result.returncode == 2
    line = one_line(result)
    assert "--model" in line and all(name in line for name in BACKBONES)
    assert not (tmp_path / "out").exists()


def small_preset(folder: Path) -> Path:
    import keras_hub

    models = keras_hub.models
    small = dict(hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32)
    models.DINOV2Backbone(
        patch_size=14, image_shape=(224, 224, 3), position_embedding_shape=(518, 518), **small
    ).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def dinov2_preset(tmp_path_factory) -> Path:
    return small_preset(tmp_path_factory.mktemp("dinov2") / "preset")


def test_a_preset_folder_without_its_weights_is_one_line(dinov2_preset, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(dinov2_preset, partial)
    (partial / "model.weights.h5").unlink()
    result = cli_here(tmp_path, capsys, "--model", "dinov2_small", "--weights", str(partial))
    assert result.returncode == 2
    assert "no model.weights.h5 or model.weights.json" in one_line(result)
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_config_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli_here(tmp_path, capsys, "--model", "dinov2_small", "--weights", str(empty))
    assert result.returncode == 2
    assert f"--weights {empty}: no readable config.json" in one_line(result)


def test_a_preset_of_another_architecture_is_refused(dinov2_preset, tmp_path, capsys):
    result = cli_here(
        tmp_path, capsys, "--model", "clip_vit_base_patch16", "--weights", str(dinov2_preset)
    )
    assert result.returncode == 2
    assert "holds a DINOV2Backbone, not the CLIPBackbone of clip_vit_base_patch16" in (
        one_line(result)
    )
    # The same class with another patch size: the load step's resize would not fit it.
    config = json.loads((dinov2_preset / "config.json").read_text())
    config["config"]["patch_size"] = 16
    other = tmp_path / "patch16"
    shutil.copytree(dinov2_preset, other)
    (other / "config.json").write_text(json.dumps(config))
    result = cli_here(tmp_path, capsys, "--model", "dinov2_small", "--weights", str(other))
    assert result.returncode == 2
    assert "its patch_size is 16, dinov2_small's is 14" in one_line(result)


@pytest.mark.slow  # a fresh interpreter (the fast tier starts none)
def test_pretrained_offline_is_one_line_before_any_work(tmp_path):
    # A proxy on a closed loopback port: Kaggle cannot be reached, whatever the network.
    offline = {
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "KAGGLEHUB_CACHE": str(tmp_path / "cache"),
    }
    result = cli(tmp_path, "--model", "dinov2_small", "--weights", "pretrained", env=offline)
    assert result.returncode == 2
    line = one_line(result)
    assert "cannot download the pretrained preset of dinov2_small" in line
    assert "kaggle://keras/dinov2/keras/dinov2_small/1" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--pooling", "max"), "--pooling is for the keras.applications models"),
        (("--resize", "center_crop"), "--resize is for the keras.applications models"),
        (("--weights", "imagenet"), "--weights imagenet is for the keras.applications models"),
    ],
)
def test_options_of_the_keras_applications_models_are_refused_for_a_hub_model(
    flags, expected, tmp_path, capsys
):
    result = cli_here(tmp_path, capsys, "--model", "siglip2_base_patch16_224", *flags)
    assert result.returncode == 2
    assert expected in one_line(result)
