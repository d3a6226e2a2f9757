"""The text query's token ids and embedding, for the tiny CLIP and SigLIP 2 presets with
their tokenizers: ids as each model was trained on them, and the embedding equal to
keras-hub's own get_text_embeddings on those ids."""

from __future__ import annotations

import numpy as np
import pytest
from text_presets import tiny_clip, tiny_siglip

from pipeline.models import ModelSpec, TextTower
from pipeline.search import Recorded, embed_text

CLIP, SIGLIP = "clip_vit_base_patch16", "siglip2_base_patch16_224"


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-presets")
    return {CLIP: tiny_clip(root / "clip"), SIGLIP: tiny_siglip(root / "siglip")}


def recorded(model: str, folder) -> Recorded:
    spec = ModelSpec.of(model, str(folder), "avg", 0)
    return Recorded(str(folder), spec, spec.resize("squash"), True, 10**8, 2**26, (), {})


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
