"""search-images over real outputs: pipeline runs on the photographs (ResNet50 with seeded
random weights, and a tiny CLIP preset with its tokenizer), their rankings against a
numpy brute force over the Parquet rows, and every refusal as one line and exit 2."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from forked import run_module
from support import PHOTO_PATHS, REPO, dead_letter, parquet_embeddings, run_cli, summary
from text_presets import tiny_clip

from pipeline.models import BACKBONES, ModelSpec, TextTower
from pipeline.search import read_recorded
from pipeline.search.scan import shard_paths, stored_rows, top_k

pytestmark = pytest.mark.pipeline_run

CLIP = "clip_vit_base_patch16"


def write_catalogue(path: Path, uris: list[str]) -> Path:
    lines = ["uri,label"] + [f"{uri},label-{Path(uri).stem}" for uri in uris]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_search(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """python -m pipeline.search ARGS, in a child of a preloaded interpreter."""
    environment = {**os.environ, **(env or {})}
    return run_module("pipeline.search", list(args), cwd=REPO, env=environment, timeout=600)


def json_results(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


def brute_force(embeddings: dict[str, np.ndarray], query: np.ndarray) -> list[tuple[str, float]]:
    """Every stored row by cosine similarity to the query, ties in URI order."""
    uris = sorted(embeddings)
    rows = np.stack([embeddings[uri] for uri in uris]).astype(np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    q = np.asarray(query, np.float64) / np.linalg.norm(query)
    similarities = rows @ q
    order = sorted(range(len(uris)), key=lambda i: (-similarities[i], uris[i]))
    return [(uris[i], float(similarities[i])) for i in order]


def assert_ranking(found: list[dict], expected: list[tuple[str, float]]) -> None:
    assert [row["uri"] for row in found] == [uri for uri, _ in expected[: len(found)]]
    for row, (_, similarity) in zip(found, expected, strict=False):
        assert abs(row["similarity"] - similarity) < 1e-6


def without_addresses(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x...", text)


def one_line_refusal(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """13 photographs and a file that is no image, in three shards; the dead letter
    holds that file's reason."""
    root = tmp_path_factory.mktemp("search-resnet")
    broken = root / "not-a-photo.jpg"
    broken.write_bytes(b"this is text, not a JPEG\n" * 20)
    csv_path = write_catalogue(root / "images.csv", [*PHOTO_PATHS, str(broken)])
    output = root / "out"
    result = run_cli(
        "--input", str(csv_path), "--output", str(output), "--weights", "random",
        "--precision", "float32", "--seed", "3", "--keep_columns", "label", "--num_shards", "3",
        "--max_failure_fraction", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"output": output, "broken": str(broken)}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-clip")
    preset = tiny_clip(root / "preset")
    csv_path = write_catalogue(root / "images.csv", PHOTO_PATHS)
    output = root / "out"
    result = run_cli(
        "--input", str(csv_path), "--output", str(output), "--model", CLIP,
        "--weights", str(preset), "--keep_columns", "label", "--precision", "float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {"output": output, "preset": preset}


def test_an_embedded_photo_finds_itself_first_and_the_ranking_is_the_brute_forces(resnet):
    output = resnet["output"]
    stored = parquet_embeddings(output)
    assert len(stored) == len(PHOTO_PATHS)
    for photo in (PHOTO_PATHS[0], PHOTO_PATHS[7]):
        found = json_results(run_search(str(output), "--image", photo, "--k", "20", "--json"))
        assert len(found) == len(PHOTO_PATHS)  # k above the row count: every row
        assert found[0]["uri"] == photo
        assert abs(found[0]["similarity"] - 1.0) < 1e-5
        assert [row["rank"] for row in found] == list(range(1, len(found) + 1))
        assert found[0]["label"] == f"label-{Path(photo).stem}"
        # The query was embedded as the stored row was: the stored row gives the same order.
        assert_ranking(found, brute_force(stored, stored[photo]))


def test_a_text_query_ranks_as_the_brute_force_with_keras_hubs_text_embedding(clip):
    output = clip["output"]
    stored = parquet_embeddings(output)
    spec = ModelSpec.of(CLIP, str(clip["preset"]), "avg", 0)
    query = TextTower(spec).embed(["a photo of a red car"])[0]
    found = json_results(run_search(str(output), "--text", "a photo of a red car", "--json",
                                    "--k", "5"))  # fmt: skip
    assert len(found) == 5
    assert_ranking(found, brute_force(stored, query))
    other = json_results(run_search(str(output), "--text", "the blue tree", "--json"))
    assert len(other) == 10
    assert_ranking(other, brute_force(stored, TextTower(spec).embed(["the blue tree"])[0]))


def test_the_default_output_is_a_table_of_rank_similarity_uri_and_kept_columns(clip):
    output = clip["output"]
    photo = PHOTO_PATHS[3]
    result = run_search(str(output), "--image", photo, "--k", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    header, first, *rest = result.stdout.splitlines()
    assert header.split() == ["rank", "similarity", "uri", "label"]
    assert first.split() == ["1", "1.0000", photo, f"label-{Path(photo).stem}"]
    assert len(rest) == 2
    stored = parquet_embeddings(output)
    expected = brute_force(stored, stored[photo])
    assert [line.split()[2] for line in [first, *rest]] == [uri for uri, _ in expected[:3]]


def test_the_scan_reads_every_shard_batch_by_batch_and_keeps_only_k(resnet):
    """Memory stays flat in N because no more than one batch is ever read at once: here
    batches of 2 rows across 3 shards give the brute force's top 4."""
    recorded = read_recorded(str(resnet["output"]))
    paths = shard_paths(recorded)
    assert len(paths) == 3
    sizes: list[int] = []

    def watched():
        for rows in stored_rows(recorded, paths, batch_rows=2):
            sizes.append(len(rows.uris))
            yield rows

    stored = parquet_embeddings(resnet["output"])
    query = stored[PHOTO_PATHS[5]]
    found = top_k(watched(), query, 4)
    assert max(sizes) == 2 and sum(sizes) == len(stored)
    assert len(sizes) >= math.ceil(len(stored) / 2)
    expected = brute_force(stored, query)[:4]
    assert [m.uri for m in found] == [uri for uri, _ in expected]
    np.testing.assert_allclose([m.similarity for m in found], [s for _, s in expected], atol=1e-9)


def test_ties_are_broken_by_uri(resnet, tmp_path):
    """Hard links to one photo embed identically: equal similarity, URI order."""
    copies = []
    for name in ("c.png", "a.png", "b.png"):
        os.link(PHOTO_PATHS[2], tmp_path / name)
        copies.append(str(tmp_path / name))
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(write_catalogue(tmp_path / "copies.csv", [*copies, PHOTO_PATHS[4]])),
        "--output", str(output), "--weights", "random", "--precision", "float32", "--seed", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json_results(run_search(str(output), "--image", PHOTO_PATHS[2], "--json"))
    assert [row["uri"] for row in found[:3]] == sorted(copies)
    assert found[3]["uri"] == PHOTO_PATHS[4]


# --- refusals: exit 2, one line ---------------------------------------------------------


def test_an_empty_or_unreadable_output_is_refused(resnet, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_refusal(run_search(str(empty), "--image", PHOTO_PATHS[0]))
    assert "holds no summary.json" in line
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "summary.json").write_text("{not json")
    line = one_line_refusal(run_search(str(garbled), "--image", PHOTO_PATHS[0]))
    assert "summary.json cannot be read" in line and "JSONDecodeError" in line
    shardless = tmp_path / "shardless"
    shardless.mkdir()
    shutil.copy(resnet["output"] / "summary.json", shardless / "summary.json")
    line = one_line_refusal(run_search(str(shardless), "--image", PHOTO_PATHS[0]))
    assert "holds no embeddings" in line


def test_a_query_image_that_cannot_be_loaded_gives_the_dead_letters_reason(resnet, tmp_path):
    [failure] = dead_letter(resnet["output"])
    assert failure["uri"] == resnet["broken"]
    line = one_line_refusal(run_search(str(resnet["output"]), "--image", resnet["broken"]))
    expected = (
        f"error: --image {resnet['broken']} cannot be loaded: "
        f"{failure['error_type']}: {failure['message']}"
    )
    # Pillow's message names the in-memory file object, whose address differs per process.
    assert without_addresses(line) == without_addresses(expected)
    assert failure["error_type"] == "UnidentifiedImageError"
    missing = str(tmp_path / "missing.jpg")
    line = one_line_refusal(run_search(str(resnet["output"]), "--image", missing))
    assert "FileNotFoundError" in line and missing in line


@pytest.mark.parametrize("k", ["0", "-3", "ten", "2.5"])
def test_a_k_that_is_not_a_positive_integer_is_refused(resnet, k):
    line = one_line_refusal(run_search(str(resnet["output"]), "--image", PHOTO_PATHS[0], "--k", k))
    assert line == f"error: argument --k: {k!r} is not a positive integer"


def test_text_on_a_model_without_a_text_tower_names_the_models_with_one(resnet):
    line = one_line_refusal(run_search(str(resnet["output"]), "--text", "a cat"))
    with_text = [name for name, spec in BACKBONES.items() if spec.text_tower]
    assert "resnet50 has no text tower" in line
    assert all(name in line for name in with_text)
    assert "dinov2" not in line


def test_text_with_random_weights_is_refused_for_want_of_a_vocabulary(clip, tmp_path):
    """The CLIP output's summary, made to record random weights as such a run does."""
    output = tmp_path / "random-clip"
    shutil.copytree(clip["output"], output)
    recorded = summary(output)
    recorded["weights"] = ModelSpec(CLIP, "random", "cls_projection", 4).describe_weights()
    recorded["seed"] = 4
    (output / "summary.json").write_text(json.dumps(recorded))
    line = one_line_refusal(run_search(str(output), "--text", "a cat"))
    assert "--weights random" in line and "vocabulary" in line


def test_text_that_is_not_utf8_is_refused_in_one_line(clip):
    """$'caf\\xe9' from a shell reaches Python as a surrogate escape, which CLIP's tokenizer
    took with a TypeError traceback and exit 1; now one line, before any model loads."""
    from test_search_text import search_with_bytes

    result = search_with_bytes(os.fsencode(clip["output"]), b"--text", b"caf\xe9")
    stderr = result.stderr.decode()
    assert (result.returncode, result.stdout) == (2, b""), stderr[-3000:]
    assert stderr.splitlines() == [
        r"error: --text 'caf\xe9' is not UTF-8: give the text in UTF-8"
    ], stderr[-3000:]


def test_search_reads_the_older_layout_and_only_the_runs_its_summary_names(resnet, tmp_path):
    """Shards beside the other outputs (the layout before embeddings/) still count; a
    shard of a run that summary.json does not name is never read."""
    older = tmp_path / "older"
    shutil.copytree(resnet["output"], older)
    recorded_summary = json.loads((older / "summary.json").read_text())
    run_id = recorded_summary.pop("embedding_runs")[0]
    (older / "summary.json").write_text(json.dumps(recorded_summary))  # as that version wrote
    for shard in (older / "embeddings").glob("embeddings-*.parquet"):
        shard.rename(older / shard.name)
    recorded = read_recorded(str(older))
    assert recorded.runs == (run_id,)
    paths = shard_paths(recorded)
    assert [Path(path).parent for path in paths] == [older] * 3
    uris = [uri for rows in stored_rows(recorded, paths) for uri in rows.uris]
    assert sorted(uris) == sorted(PHOTO_PATHS)

    stray = tmp_path / "stray"
    shutil.copytree(resnet["output"], stray)
    [first, *_] = sorted((stray / "embeddings").glob("embeddings-*.parquet"))
    other_run = "20200101T000000-abcdef"
    shutil.copy(first, first.with_name(first.name.replace(run_id, other_run)))
    paths = shard_paths(read_recorded(str(stray)))
    assert len(paths) == 3 and not any(other_run in path for path in paths)
