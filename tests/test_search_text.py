"""The text query's token ids and embedding, for the tiny CLIP and SigLIP 2 presets with
their tokenizers: ids as each model was trained on them, and the embedding equal to
keras-hub's own get_text_embeddings on those ids; and a text (or path) that is not UTF-8
refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from support import REPO
from text_presets import tiny_clip, tiny_siglip

from pipeline.inputs import Decoding
from pipeline.models import ModelSpec, TextTower, embedding_shape
from pipeline.outputs import Provenance
from pipeline.search import Recorded, embed_text

CLIP, SIGLIP = "clip_vit_base_patch16", "siglip2_base_patch16_224"


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-presets")
    return {CLIP: tiny_clip(root / "clip"), SIGLIP: tiny_siglip(root / "siglip")}


def recorded(model: str, folder) -> Recorded:
    spec = ModelSpec.of(model, str(folder), "avg", 0)
    decoding = Decoding(spec.resize("squash"), True, 10**8, 2**26)
    made = Provenance.made(spec, decoding, "tensorflow", "float32", "", embedding_shape(spec))
    return Recorded(str(folder), made, decoding.resize)


def hub(model: str, folder):
    """keras-hub's backbone and tokenizer, loaded from the preset on their own."""
    import keras_hub

    family = {
        CLIP: ("CLIPBackbone", "CLIPTokenizer"),
        SIGLIP: ("SigLIPBackbone", "SigLIPTokenizer"),
    }
    backbone, tokenizer = (getattr(keras_hub.models, name) for name in family[model])
    return backbone.from_preset(str(folder)), tokenizer.from_preset(str(folder))


def reference_embedding(backbone, ids: list[int]) -> np.ndarray:
    vector = np.asarray(backbone.get_text_embeddings(np.array([ids], np.int32)))[0]
    return vector / np.linalg.norm(vector)


def test_clip_ids_are_lower_cased_start_text_end_padded_to_77(presets):
    _, tokenizer = hub(CLIP, presets[CLIP])
    tower = TextTower(recorded(CLIP, presets[CLIP]).spec)
    [ids] = tower.token_ids(["A Photo of the RED Car"]).tolist()
    words = [int(i) for i in np.asarray(tokenizer("a photo of the red car"))]
    start, end = (tokenizer.token_to_id(t) for t in ("<|startoftext|>", "<|endoftext|>"))
    assert len(ids) == 77
    assert ids[: len(words) + 2] == [start, *words, end]
    # CLIP pads with its end token; the text pooler reads the first (highest-id) one.
    assert ids[len(words) + 2 :] == [end] * (77 - len(words) - 2)
    assert len(words) == 6 and start not in words and end not in words


def test_siglip_ids_are_64_long_with_the_end_token_kept_last_when_cut(presets):
    _, tokenizer = hub(SIGLIP, presets[SIGLIP])
    tower = TextTower(recorded(SIGLIP, presets[SIGLIP]).spec)
    short, long = "a red car at night", " ".join(["the blue tree"] * 40)
    [short_ids, long_ids] = tower.token_ids([short, long]).tolist()
    words = [int(i) for i in np.asarray(tokenizer(short))]
    eos, pad = tokenizer.end_token_id, tokenizer.pad_token_id
    assert len(short_ids) == len(long_ids) == 64
    assert short_ids == [*words, eos] + [pad] * (64 - len(words) - 1)
    long_words = [int(i) for i in np.asarray(tokenizer(long))]
    assert len(long_words) > 64
    assert long_ids == [*long_words[:63], eos]
    assert tokenizer.start_token_id not in short_ids


@pytest.mark.parametrize("model", [CLIP, SIGLIP])
def test_the_text_query_embedding_equals_keras_hubs_on_the_same_ids(presets, model):
    backbone, _ = hub(model, presets[model])
    text = "A photo of the cat at night"
    tower = TextTower(recorded(model, presets[model]).spec)
    [ids] = tower.token_ids([text]).tolist()
    query = embed_text(recorded(model, presets[model]), text, tower)
    expected = reference_embedding(backbone, ids)
    assert query.shape == expected.shape
    np.testing.assert_allclose(query, expected, rtol=0, atol=1e-6)
    assert abs(np.linalg.norm(query) - 1) < 1e-6
    # Another text is another embedding: the comparison can fail.
    other = embed_text(recorded(model, presets[model]), "a blue car", tower)
    assert np.abs(other - expected).max() > 1e-3


# --- Arguments that are not UTF-8 ----------------------------------------------------------


def search_with_bytes(*args: bytes) -> subprocess.CompletedProcess:
    """python -m pipeline.search with argv as bytes, as a shell passes $'caf\\xe9'."""
    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"pipeline.search", *args],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (  # Latin-1
            [b"{output}", b"--text", b"caf\xe9 au lait"],
            r"error: --text 'caf\xe9 au lait' is not UTF-8: give the text in UTF-8",
        ),
        (  # a UTF-8 sequence cut short
            [b"{output}", b"--text", b"caf\xc3"],
            r"error: --text 'caf\xc3' is not UTF-8: give the text in UTF-8",
        ),
        (
            [b"{output}", b"--image", b"photos/caf\xe9.jpg"],
            r"error: --image 'photos/caf\xe9.jpg' is not UTF-8: give the image's path in UTF-8"
            " (rename the file)",
        ),
        (
            [b"{output}\xe9", b"--text", b"a cat"],
            r"error: OUTPUT '{output}\xe9' is not UTF-8: give the output's path in UTF-8",
        ),
    ],
)
def test_an_argument_that_is_not_utf8_is_refused_in_one_line(tmp_path, argv, line, capsys):
    """On Linux such argv bytes reach Python as surrogate escapes (os.fsdecode), which a
    tokenizer cannot take (before: a TypeError traceback, exit 1). Refused before the
    output is read, so before any model loads: the output named here holds nothing."""
    from pipeline.search.__main__ import main

    output = os.fsencode(tmp_path / "out")
    argv = [os.fsdecode(arg.replace(b"{output}", output)) for arg in argv]
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.splitlines() == [line.replace("{output}", os.fsdecode(output))]


def test_argument_bytes_from_a_shell_are_refused_by_the_command(tmp_path):
    """The same through the command, argv given as bytes, as a shell passes $'caf\\xe9'."""
    result = search_with_bytes(os.fsencode(tmp_path / "out"), b"--text", b"caf\xe9 au lait")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert result.stdout == b"" and "Traceback" not in stderr, stderr
    assert stderr.splitlines() == [
        r"error: --text 'caf\xe9 au lait' is not UTF-8: give the text in UTF-8"
    ]


# --- Usage errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        pytest.param(
            ["--txt", "a cat"],
            "error: unrecognised argument(s): --txt (did you mean --text?) "
            "(see search-images --help)",
            id="unknown",
        ),
        pytest.param(
            ["--text", "a cat", "--bigquery-table", "p.d.t"],
            "error: unrecognised argument(s): --bigquery-table (did you mean --bigquery_table?) "
            "(see search-images --help)",
            id="unknown-spelling",
        ),
        pytest.param(
            ["--text", "a cat", "--k", "ten"],
            "error: argument --k: 'ten' is not a positive integer",
            id="int",
        ),
        pytest.param(["--text"], "error: argument --text: expected one argument", id="no-value"),
        pytest.param([], "error: one of the arguments --text --image is required", id="no-query"),
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(tmp_path, args, line, capsys):
    """argparse's refusals as the search's own: one `error:` line, no usage block, with the
    flag a misspelt one most likely meant; before the output is read."""
    from pipeline.search.__main__ import main

    assert main([str(tmp_path / "out"), *args]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err.splitlines() == [line]
