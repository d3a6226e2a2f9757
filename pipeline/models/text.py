"""The text towers of CLIP and SigLIP 2: texts to token ids as each model was trained,
token ids to L2-normalised text embeddings, and the score of a text for an image."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.models.backbones import ModelSpec
from pipeline.models.hub import load_backbone, load_tokenizer


class TextTower:
    """A model's text encoder and tokenizer, loaded once, from the same preset as its
    image tower."""

    def __init__(self, spec: ModelSpec, backbone: Any | None = None, tokenizer: Any | None = None):
        import keras_hub

        line = spec.backbone
        if not line.text_tower:
            raise ValueError(f"{spec.model} has no text tower")
        self.spec = spec
        self.backbone = backbone if backbone is not None else load_backbone(spec)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
        # CLIP: start and end tokens, lower-cased, 77 long (openai/CLIP clip.tokenize; the
        # text pooler reads the first end token). SigLIP 2: no start token, the end token
        # kept last when cut ("sticky"), padded to exactly the encoder's length, which it
        # reads at the last position (big_vision SigLIP2_demo: tok(length=64,
        # model="gemma", bos="no", eos="sticky")).
        start = {"start_value": self.tokenizer.start_token_id} if line.start_token else {}
        self._packer = keras_hub.layers.StartEndPacker(
            sequence_length=line.sequence_length,
            end_value=self.tokenizer.end_token_id,
            pad_value=self.tokenizer.pad_token_id,
            return_padding_mask=False,
            **start,
        )

    def token_ids(self, texts: list[str]) -> np.ndarray:
        """(n, sequence_length) int32: the texts lower-cased, tokenised and packed."""
        tokens = self.tokenizer([text.lower() for text in texts])
        return np.asarray(self._packer(tokens), dtype=np.int32)

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(n, d) float32 text embeddings, L2-normalised like the image embeddings."""
        chunks = []
        for start in range(0, len(texts), batch_size):
            ids = self.token_ids(texts[start : start + batch_size])
            chunks.append(np.asarray(self.backbone.get_text_embeddings(ids), dtype=np.float32))
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    @property
    def head(self) -> tuple[float, float] | None:
        """SigLIP's (exp(logit_scale), logit_bias) as the backbone loaded them; None for
        CLIP, whose score is the cosine itself."""
        return siglip_head(self.backbone)

    def scores(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        """(n_images, n_texts): cosine for CLIP; for SigLIP the model's own sigmoid
        probability, sigmoid(exp(logit_scale) * cosine + logit_bias)."""
        return text_scores(images @ texts.T, self.head)


def siglip_head(backbone: Any) -> tuple[float, float] | None:
    """A SigLIP backbone's (exp(logit_scale), logit_bias); None for any other backbone."""
    head = getattr(backbone, "siglip_head", None)
    if head is None:
        return None
    return float(np.exp(np.asarray(head.logit_scale))), float(np.asarray(head.logit_bias))


def text_scores(cosine: np.ndarray, head: tuple[float, float] | None) -> np.ndarray:
    """Scores from cosine similarities of L2-normalised embeddings: the cosine itself
    without a head, else sigmoid(scale * cosine + bias), in float64."""
    cosine = np.asarray(cosine, dtype=np.float64)
    if head is None:
        return cosine
    scale, bias = head
    return 1.0 / (1.0 + np.exp(-(scale * cosine + bias)))
