"""The query's embedding: a text through the model's text tower, or an image through the
pipeline's own load step and embedding model, as the output's run recorded them."""

from __future__ import annotations

import numpy as np
from apache_beam import pvalue

from pipeline.inputs import InputError, LoadImageFn, first_uris
from pipeline.models import (
    BACKBONES,
    CALIBRATION_IMAGES,
    INT8,
    CalibrationSample,
    EngineUnavailableError,
    TextTower,
    WeightsUnavailableError,
    sample_digest,
    spec_embedder,
)
from pipeline.search.recorded import Recorded, SearchError


def text_models() -> list[str]:
    """The table's models that have a text tower."""
    return [name for name, line in BACKBONES.items() if line.text_tower]


def check_text_query(recorded: Recorded) -> None:
    """SearchError unless the output's model can embed a text, before any model loads."""
    spec = recorded.spec
    if not spec.backbone.text_tower:
        raise SearchError(
            f"--text: {spec.model} has no text tower; search by --image, or embed the images "
            f"with a model that has one ({', '.join(text_models())})"
        )
    if not spec.pretrained:
        raise SearchError(
            f"--text: the output was embedded with --weights random, and random weights come "
            f"with no vocabulary for {spec.model}'s tokenizer; search by --image, or embed "
            "with pretrained weights or a preset folder"
        )


def embed_text(recorded: Recorded, text: str, tower: TextTower | None = None) -> np.ndarray:
    """(d,) float32, L2-normalised: the text as the model's text tower embeds it."""
    check_text_query(recorded)
    try:
        tower = tower or TextTower(recorded.spec)
    except WeightsUnavailableError as error:
        raise SearchError(str(error)) from error
    return tower.embed([text])[0]


def load_image(recorded: Recorded, uri: str) -> np.ndarray:
    """The query image's pixels, read, decoded, oriented and resized by the load step with
    the run's settings; SearchError with the dead letter's reason if it cannot be loaded."""
    load = LoadImageFn(recorded.decoding)
    load.setup()
    [loaded] = list(load.process(uri))
    if isinstance(loaded, pvalue.TaggedOutput):
        failure = loaded.value
        raise SearchError(
            f"--image {uri} cannot be loaded: {failure.error_type}: {failure.message}"
        )
    return loaded[1]


def embed_image(recorded: Recorded, uri: str) -> np.ndarray:
    """(d,) float32: the image's embedding as the run made the stored ones."""
    pixels = load_image(recorded, uri)
    try:
        calibration = calibration_images(recorded) if recorded.precision == INT8 else None
        embed, _ = spec_embedder(recorded.spec, recorded.engine, recorded.precision, calibration)
    except (WeightsUnavailableError, EngineUnavailableError) as error:
        raise SearchError(str(error)) from error
    return np.asarray(embed(pixels[np.newaxis]))[0].reshape(-1)


def calibration_images(recorded: Recorded) -> np.ndarray:
    """int8's calibration images, picked from the run's input as its launcher picked them;
    SearchError if the input no longer starts with the images the run calibrated on."""
    try:
        uris = first_uris(recorded.input, CALIBRATION_IMAGES, recorded.uri_column)
    except InputError as error:
        raise SearchError(f"int8 embeddings' calibration sample: {error}") from error
    if sample_digest(uris) != recorded.calibration:
        raise SearchError(
            f"{recorded.output} holds int8 embeddings calibrated on the first images of "
            f"{recorded.input}, which now lists others first; the query cannot be quantised "
            "as they were"
        )
    return CalibrationSample(uris, recorded.decoding).load()
