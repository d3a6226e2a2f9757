"""Score heads (--score_head): safetensors files of dense layers, written here with the
safetensors library as a converted PyTorch head would be. Their scores equal a float64
numpy reference on the stored embeddings, every output carries them, the summary
describes them, and every file that is not a head for this model is refused before any
work, a pickle among them, unread."""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support import (
    JPEG_PHOTOS,
    PHOTO_PATHS,
    npy_embeddings,
    npy_index,
    parquet_embeddings,
    read_parquet,
    run_cli,
    summary,
)

from pipeline.common import ImageKey
from pipeline.destinations.vectorsearch import datapoint_line
from pipeline.models import HeadError, HeadSpec, ModelSpec, parse_heads, read_head
from pipeline.models.heads import ACTIVATIONS, HeadReference
from pipeline.options import UsageError
from pipeline.run.preflight import check_score_heads

RESNET_SIZE = 2048
PHOTOS = PHOTO_PATHS[:5]


def write_head(
    path: Path,
    sizes: list[int],
    activations: list[str],
    *,
    model: str = "resnet50",
    normalize: bool = False,
    seed: int = 0,
    extra: dict | None = None,
) -> Path:
    """A head of len(sizes) - 1 dense layers, sizes[0] in, as safetensors with its metadata."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for index, (inputs, outputs) in enumerate(itertools.pairwise(sizes)):
        scale = 1 / math.sqrt(inputs)
        tensors[f"layers.{index}.weight"] = (rng.normal(size=(outputs, inputs)) * scale).astype(
            np.float32
        )
        tensors[f"layers.{index}.bias"] = rng.normal(size=outputs).astype(np.float32) * 0.1
    metadata = {
        "activations": json.dumps(activations),
        "normalize": "true" if normalize else "false",
        "model": model,
    }
    save_file(tensors, str(path), metadata={**metadata, **(extra or {})})
    return path


def reference_scores(path: Path, embeddings: np.ndarray) -> np.ndarray:
    """The head applied in float64, as PyTorch's Linear and activations define it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as opened:
        metadata = opened.metadata()
        tensors = {key: opened.get_tensor(key).astype(np.float64) for key in opened.keys()}  # noqa: SIM118 (a safe_open, not a dict)
    values = embeddings.astype(np.float64).reshape(len(embeddings), -1)
    if metadata["normalize"] == "true":
        values = values / np.linalg.norm(values, axis=1, keepdims=True)
    functions = {
        "relu": lambda x: np.maximum(x, 0),
        "gelu": np.vectorize(lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))),
        "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
        "tanh": np.tanh,
        "none": lambda x: x,
    }
    for index, activation in enumerate(json.loads(metadata["activations"])):
        weight, bias = tensors[f"layers.{index}.weight"], tensors[f"layers.{index}.bias"]
        values = functions[activation](values @ weight.T + bias)
    return values[:, 0]


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("heads")
    return {
        "linear": write_head(folder / "linear.safetensors", [RESNET_SIZE, 1], ["none"]),
        "mlp": write_head(
            folder / "mlp.safetensors",
            [RESNET_SIZE, 64, 16, 1],
            ["gelu", "relu", "sigmoid"],
            normalize=True,
            seed=1,
        ),
    }


# --- Reading and applying a head ------------------------------------------------------------


def test_a_head_scores_as_the_float64_reference_for_every_activation(tmp_path):
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(9, 32)).astype(np.float32)
    for activation in ACTIVATIONS:
        path = write_head(
            tmp_path / f"{activation}.safetensors",
            [32, 8, 1],
            [activation, "tanh"],
            normalize=activation == "gelu",
        )
        head = read_head(HeadSpec("score", str(path)))
        scores = head(embeddings)
        assert scores.dtype == np.float32 and scores.shape == (9,)
        np.testing.assert_allclose(scores, reference_scores(path, embeddings), atol=1e-5)
    # A PyTorch Linear without a bias reads as a zero bias.
    weight = rng.normal(size=(1, 32)).astype(np.float32)
    bare = tmp_path / "bare.safetensors"
    save_file(
        {"layers.0.weight": weight},
        str(bare),
        metadata={"activations": '["none"]', "model": "resnet50"},
    )
    np.testing.assert_allclose(
        read_head(HeadSpec("s", str(bare)))(embeddings), embeddings @ weight[0], atol=1e-5
    )


def test_head_flags_parse_as_name_and_path():
    assert parse_heads("a=x.safetensors,b=gs://b/y.safetensors, c_2=z") == (
        HeadSpec("a", "x.safetensors"),
        HeadSpec("b", "gs://b/y.safetensors"),
        HeadSpec("c_2", "z"),
    )
    assert parse_heads("") == ()
    for given, said in {
        "noequals": "give NAME=PATH",
        "=path": "give NAME=PATH",
        "Aesthetic=p": "lower-case letters",
        "2x=p": "not starting with a digit",
        "a=p,a=q": "names 'a' twice",
    }.items():
        with pytest.raises(HeadError, match=said):
            parse_heads(given)


def test_every_file_that_is_not_a_head_for_this_model_is_refused(tmp_path, heads):
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    pickled = tmp_path / "head.pth"
    pickled.write_bytes(pickle.dumps({"layers.0.weight": Trap()}))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(64))
    refusals = {
        str(pickled): "is not a safetensors file",
        str(garbage): "is not a safetensors file",
        str(tmp_path / "missing.safetensors"): "cannot read",
        str(write_head(tmp_path / "act.safetensors", [8, 1], ["swish"])): "activation 'swish'",
        str(write_head(tmp_path / "count.safetensors", [8, 4, 1], ["relu"])): "for 2 layers",
        str(write_head(tmp_path / "out.safetensors", [8, 2], ["none"])): "gives 2 values",
        str(write_head(tmp_path / "nomodel.safetensors", [8, 1], ["none"], model="")): (
            "names no model"
        ),
        str(
            write_head(
                tmp_path / "norm.safetensors", [8, 1], ["none"], extra={"normalize": "maybe"}
            )
        ): "normalize is 'maybe'",
    }
    stray = tmp_path / "stray.safetensors"
    save_file(
        {"layers.0.weight": np.ones((1, 8), np.float32), "scale": np.ones(1, np.float32)},
        str(stray),
        metadata={"activations": '["none"]', "model": "resnet50"},
    )
    refusals[str(stray)] = "holds the tensor 'scale'"
    chain = tmp_path / "chain.safetensors"
    save_file(
        {
            "layers.0.weight": np.ones((4, 8), np.float32),
            "layers.1.weight": np.ones((1, 5), np.float32),
        },
        str(chain),
        metadata={"activations": '["relu", "none"]', "model": "resnet50"},
    )
    refusals[str(chain)] = "layers.1.weight takes 5 values, layers.0 gives 4"
    for path, said in refusals.items():
        with pytest.raises(HeadError, match=said) as refused:
            read_head(HeadSpec("score", path))
        assert str(refused.value).startswith("--score_head score: "), refused.value
        assert path in str(refused.value)
    assert not marker.exists(), "a pickle was unpickled"

    spec = ModelSpec.of("resnet50", "random", "avg", 0)
    linear = HeadSpec("aesthetic", str(heads["linear"]))
    [checked] = check_score_heads((linear,), spec)
    assert checked.input_size == RESNET_SIZE
    small = HeadSpec("small", str(write_head(tmp_path / "s.safetensors", [8, 1], ["none"])))
    with pytest.raises(
        UsageError, match="takes embeddings of 8 values, --model resnet50 makes 2048"
    ):
        check_score_heads((small,), spec)
    clip = write_head(
        tmp_path / "c.safetensors", [2048, 1], ["none"], model="clip_vit_large_patch14"
    )
    other = HeadSpec("clip", str(clip))
    with pytest.raises(UsageError, match="made for --model clip_vit_large_patch14"):
        check_score_heads((other,), spec)


def test_a_head_changed_after_the_launch_fails_the_worker(tmp_path, heads):
    path = tmp_path / "head.safetensors"
    shutil.copy(heads["linear"], path)
    launched = read_head(HeadSpec("aesthetic", str(path)))
    reference = HeadReference("aesthetic", str(path), launched.digest)
    assert reference.read().digest == launched.digest
    write_head(path, [RESNET_SIZE, 1], ["none"], seed=9)
    with pytest.raises(HeadError, match="changed after the run started"):
        reference.read()


def test_scores_are_numeric_restricts_in_the_vector_search_files():
    key = ImageKey("gs://b/a.jpg", 3, 2, scores=(0.25, -1.5))
    line = json.loads(datapoint_line((key, np.ones(2, np.float32)), (), "", ("a", "b")))
    assert line["numeric_restricts"] == [
        {"namespace": "a", "value_float": 0.25},
        {"namespace": "b", "value_float": -1.5},
    ]


# --- Runs -----------------------------------------------------------------------------------


def head_flags(heads: dict[str, Path]) -> list[str]:
    return [
        "--score_head",
        f"aesthetic={heads['linear']}",
        "--score_head",
        f"quality={heads['mlp']}",
    ]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, heads):
    folder = tmp_path_factory.mktemp("scored")
    listing = folder / "photos.csv"
    listing.write_text("uri\n" + "\n".join(PHOTOS) + "\n")
    output = folder / "out"
    result = run_cli(
        "--input", str(listing), "--output", str(output), "--weights", "random",
        "--precision", "float32", "--map", *head_flags(heads),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"folder": folder, "listing": listing, "output": output}


@pytest.mark.pipeline_run
def test_scores_equal_the_reference_on_the_stored_embeddings(scored_run, heads):
    output = scored_run["output"]
    embeddings = parquet_embeddings(output)
    uris = sorted(embeddings)
    stored = np.stack([embeddings[uri] for uri in uris])
    table, _ = read_parquet(output)
    assert table.schema.names[5:7] == ["aesthetic", "quality"]
    assert str(table.schema.field("aesthetic").type) == "float"
    rows = {row["uri"]: row for row in table.to_pylist()}
    made = summary(output)
    for name, path in {"aesthetic": heads["linear"], "quality": heads["mlp"]}.items():
        expected = reference_scores(path, stored)
        found = np.array([rows[uri][name] for uri in uris])
        np.testing.assert_allclose(found, expected, atol=1e-5, rtol=1e-5)
        described = made["scores"][name]
        assert described["count"] == len(PHOTOS)
        assert described["mean"] == pytest.approx(float(np.mean(found)), abs=1e-5)
        deciles = described["deciles"]
        assert len(deciles) == 11 and deciles == sorted(deciles)
        assert deciles[0] == pytest.approx(float(found.min()), abs=1e-5)
        assert deciles[-1] == pytest.approx(float(found.max()), abs=1e-5)
        assert all(np.isclose(found, value, atol=1e-5).any() for value in deciles)
    digests = dict(part.split("=") for part in made["score_heads"].split(","))
    assert list(digests) == ["aesthetic", "quality"]
    assert digests["aesthetic"] == read_head(HeadSpec("a", str(heads["linear"]))).digest


@pytest.mark.pipeline_run
def test_the_report_lists_the_lowest_and_highest_scored_and_maps_every_score(scored_run):
    output = scored_run["output"]
    table, _ = read_parquet(output)
    rows = table.to_pylist()
    page = (output / "report.html").read_text()
    data = json.loads(
        page.split('<script type="application/json" id="map-data">', 1)[1].split("</script>")[0]
    )
    assert data["scores"] == ["aesthetic", "quality"]
    mapped = {point["uri"]: point["scores"] for point in data["points"]}
    for row in rows:
        assert mapped[row["uri"]] == pytest.approx([row["aesthetic"], row["quality"]], abs=1e-5)
    for name in ("aesthetic", "quality"):
        section = page.split(f'<div class="score-row" data-score="{name}">', 1)[1]
        for end, order in (("lowest", 1), ("highest", -1)):
            listed = section.split(f'<div class="{end}">', 1)[1].split("</div>", 1)[0]
            titles = [part.split('"', 1)[0] for part in listed.split('<figure title="')[1:]]
            expected = sorted(rows, key=lambda row: (order * row[name], row["uri"]))
            assert titles == [row["uri"] for row in expected[:6]], (name, end)


@pytest.mark.pipeline_run
def test_openvino_npy_scores_equal_the_reference_on_their_stored_embeddings(heads, tmp_path):
    output = tmp_path / "out"
    result = run_cli(
        "--input", f"{os.path.dirname(JPEG_PHOTOS[0])}/*.jpg", "--output", str(output),
        "--weights", "random", "--engine", "openvino", "--precision", "float32",
        "--output_format", "npy", *head_flags(heads),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    index = {row["uri"]: row for row in npy_index(output)}
    embeddings = npy_embeddings(output)
    uris = sorted(embeddings)
    stored = np.stack([embeddings[uri] for uri in uris])
    for name, path in {"aesthetic": heads["linear"], "quality": heads["mlp"]}.items():
        found = np.array([float(index[uri][name]) for uri in uris])
        np.testing.assert_allclose(found, reference_scores(path, stored), atol=1e-5, rtol=1e-5)


@pytest.mark.pipeline_run
def test_a_refused_head_is_one_line_and_exit_2_before_any_work(heads, tmp_path):
    pickled = tmp_path / "head.pth"
    pickled.write_bytes(pickle.dumps({"layers.0.weight": np.ones((1, 2048))}))
    listing = tmp_path / "photos.csv"
    listing.write_text("uri\n" + PHOTO_PATHS[0] + "\n")
    for given, said in {
        f"aesthetic={pickled}": "is not a safetensors file",
        f"uri={heads['linear']}": "clash with the output's own column 'uri'",
    }.items():
        output = tmp_path / "out"
        result = run_cli(
            "--input", str(listing), "--output", str(output), "--weights", "random",
            "--score_head", given,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr[-3000:]
        [line] = result.stderr.strip().splitlines()
        assert said in line and line.startswith("error: "), line
        assert not output.exists()


@pytest.mark.pipeline_run
def test_skip_existing_refuses_other_heads(scored_run, heads, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(scored_run["output"], output)
    other = write_head(tmp_path / "other.safetensors", [RESNET_SIZE, 1], ["none"], seed=5)
    result = run_cli(
        "--input", str(scored_run["listing"]), "--output", str(output), "--weights", "random",
        "--precision", "float32", "--skip_existing",
        "--score_head", f"aesthetic={other}", "--score_head", f"quality={heads['mlp']}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = result.stderr.strip().splitlines()
    theirs = summary(scored_run["output"])["score_heads"]
    ours = theirs.replace(
        read_head(HeadSpec("a", str(heads["linear"]))).digest,
        read_head(HeadSpec("a", str(other))).digest,
    )
    assert f"score_heads {theirs} there, {ours} here" in line
