"""Tiny CLIP and SigLIP 2 presets with a tokenizer each, built and saved by the tests:
keras-hub's classes, small widths, vocabularies made here."""

from __future__ import annotations

import io
from pathlib import Path

WORDS = ("a", "photo", "of", "the", "cat", "dog", "car", "red", "blue", "at", "night", "tree")


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-pair vocabulary and merges that spell WORDS, with CLIP's start and end
    tokens last: the end token has the highest id, which CLIPTextPooler's argmax finds."""
    vocabulary: dict[str, int] = {}
    merges: list[str] = []
    for character in sorted(set("".join(WORDS)) | set(".,!")):
        vocabulary.setdefault(character, len(vocabulary))
        vocabulary.setdefault(character + "</w>", len(vocabulary))
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocabulary.setdefault(parts[0], len(vocabulary))
    vocabulary["<|startoftext|>"] = len(vocabulary)
    vocabulary["<|endoftext|>"] = len(vocabulary)
    return vocabulary, merges


def gemma_proto() -> bytes:
    """A SentencePiece model trained here with Gemma's special ids (pad 0, eos 1, bos 2,
    unk 3)."""
    import sentencepiece

    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=48,
        model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def tiny_clip(folder: Path, seed: int = 1) -> Path:
    """A CLIPBackbone at CLIP B/16's patch and image size, with its tokenizer."""
    import keras
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed(seed)
    vocabulary, merges = clip_vocabulary()
    small = dict(hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)
    backbone = models.CLIPBackbone(
        models.CLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **small),
        models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary), embedding_dim=32, max_sequence_length=77, **small
        ),
        projection_dim=24,
    )
    backbone.save_to_preset(str(folder))
    tokenizer = models.CLIPTokenizer(vocabulary=vocabulary, merges=merges, pad_with_end_token=True)
    tokenizer.save_to_preset(str(folder))
    return folder


def tiny_siglip(folder: Path, seed: int = 2) -> Path:
    """A SigLIPBackbone at SigLIP 2 base's patch and image size, with a Gemma tokenizer."""
    import keras
    import keras_hub

    models = keras_hub.models
    keras.utils.set_random_seed(seed)
    tokenizer = models.GemmaTokenizer(proto=gemma_proto())
    small = dict(hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64)
    backbone = models.SigLIPBackbone(
        models.SigLIPVisionEncoder(patch_size=16, image_shape=(224, 224, 3), **small),
        models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(), embedding_dim=32,
            max_sequence_length=64, projection_dim=32, **small,
        ),
    )  # fmt: skip
    backbone.save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return folder
