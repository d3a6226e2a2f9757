"""The model handler against Keras's own model on the same weights and images."""

from __future__ import annotations

import numpy as np
import pytest
from support import BACKBONE_SEED, PHOTO_PATHS, keras_backbone, relative_error

from pipeline.inputs.images import Resize, decode
from pipeline.models.backbones import BACKBONES, ModelSpec, build_backbone, embedding_shape
from pipeline.models.handler import KerasEmbeddingHandler
from pipeline.models.weights import WeightsUnavailableError
from pipeline.run.preflight import check_weights

SEED = BACKBONE_SEED  # the handler's seed: its backbone is keras_backbone's


@pytest.fixture(scope="module")
def images():
    paths = PHOTO_PATHS[:3]
    return [decode(open(p, "rb").read(), Resize(224), jpeg_draft=False).pixels for p in paths]


@pytest.fixture(scope="module")
def keras_maps(images):
    """Keras's feature maps of the images per (model, preprocess_input or not), made once
    each: a model's references for every pooling start from the same maps."""
    made: dict[tuple[str, bool], np.ndarray] = {}
    models: dict[str, object] = {}  # one Keras model per name serves both inputs

    def maps(model_name: str, preprocess: bool = True) -> np.ndarray:
        import keras

        if (model_name, preprocess) not in made:
            batch = np.stack(images).astype(np.float32)
            if preprocess:
                module = getattr(keras.applications, BACKBONES[model_name].module)
                batch = module.preprocess_input(batch)
            if model_name not in models:
                models[model_name] = keras_backbone(model_name)
            made[model_name, preprocess] = np.asarray(models[model_name](batch, training=False))
        return made[model_name, preprocess]

    return maps


def pooled(maps: np.ndarray, pooling: str) -> np.ndarray:
    """Feature maps pooled by numpy as Keras defines it."""
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    if pooling == "max":
        return maps.max(axis=(1, 2))
    return maps


@pytest.fixture(scope="module")
def embed(images):
    """The handler's embeddings of the images per (model, pooling), made once each."""
    made: dict[tuple[str, str], list[np.ndarray]] = {}

    def embeddings(model_name: str, pooling: str) -> list[np.ndarray]:
        if (model_name, pooling) not in made:
            spec = ModelSpec(model_name, "random", pooling, SEED)
            handler = KerasEmbeddingHandler(
                spec, min_batch_size=1, max_batch_size=8, engine="tensorflow"
            )
            embedded = handler.run_inference(images, handler.load_model())
            made[model_name, pooling] = [image.embedding for image in embedded]
        return made[model_name, pooling]

    return embeddings


@pytest.mark.parametrize(
    ("model_name", "pooling", "shape"),
    [
        ("resnet50", "avg", (2048,)),
        # slow: another pooling of the same model, one more model to build and run (3 s
        # each), or the same code path as resnet50's, with a larger or another Keras model
        # to build and run twice (7-10 s each); make test runs them.
        pytest.param("resnet50", "max", (2048,), marks=pytest.mark.slow),
        pytest.param("resnet50", "none", (7, 7, 2048), marks=pytest.mark.slow),
        pytest.param("resnet101", "avg", (2048,), marks=pytest.mark.slow),
        pytest.param("efficientnet_b0", "avg", (1280,), marks=pytest.mark.slow),
    ],
)
def test_handler_equals_keras_with_preprocess_input(model_name, pooling, shape, embed, keras_maps):
    got = embed(model_name, pooling)
    expected = pooled(keras_maps(model_name), pooling)
    assert embedding_shape(ModelSpec(model_name, "random", pooling, SEED)) == shape
    for actual, wanted in zip(got, expected, strict=True):
        assert actual.shape == shape and actual.dtype == np.float32
        assert relative_error(actual, wanted) <= 1e-4


def test_preprocess_input_is_really_applied(embed, keras_maps):
    """Feeding raw 0-255 RGB, as the original article did, gives other numbers."""
    got = embed("resnet50", "avg")
    without = pooled(keras_maps("resnet50", preprocess=False), "avg")
    for actual, raw in zip(got, without, strict=True):
        assert relative_error(actual, raw) > 0.01


def test_a_weights_file_of_another_model_is_refused_at_launch(tmp_path):
    path = tmp_path / "efficientnet.weights.h5"
    keras_backbone("efficientnet_b0").save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="does not fit resnet50"):
        check_weights(ModelSpec("resnet50", str(path), "avg"), local=True)
    with pytest.raises(WeightsUnavailableError, match="cannot read --weights"):
        check_weights(ModelSpec("resnet50", str(tmp_path / "absent.weights.h5"), "avg"), local=True)
    # A worker that is handed such a file anyway refuses it too, by Keras's own loading.
    with pytest.raises(WeightsUnavailableError, match="cannot load --weights"):
        build_backbone(ModelSpec("resnet50", str(path), "avg"))
