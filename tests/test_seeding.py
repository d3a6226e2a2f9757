"""Random weights follow from the seed alone, while other threads of the process draw
random numbers (as Beam's worker threads do)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.models.backbones import ModelSpec, build_backbone
from pipeline.models.seeding import keras_seed


def weights_of(model) -> list[np.ndarray]:
    return [np.asarray(weight) for weight in model.get_weights()]


def built_alone_and_beside_a_drawing_thread(build: Callable) -> tuple[list, list]:
    alone = weights_of(build())
    stop = threading.Event()

    def draw():  # as Beam's element-size sampling does in a bundle's thread
        while not stop.is_set():
            random.random()

    drawing = threading.Thread(target=draw)
    drawing.start()
    try:
        beside = weights_of(build())
    finally:
        stop.set()
        drawing.join()
    return alone, beside


def same(first: list, second: list) -> bool:
    return len(first) == len(second) and all(
        np.array_equal(a, b) for a, b in zip(first, second, strict=True)
    )


def small_model():
    import keras

    inputs = keras.Input((16, 16, 3))
    features = inputs
    for _ in range(6):
        features = keras.layers.Conv2D(8, 3)(features)
    return keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(features)))


def small_model_under_keras_seed():
    with keras_seed(3):
        return small_model()


def test_keras_seed_gives_the_same_weights_while_another_thread_draws():
    import keras

    alone, beside = built_alone_and_beside_a_drawing_thread(small_model_under_keras_seed)
    assert same(alone, beside)
    # The weights Keras's own set_random_seed gives a process that does nothing else.
    keras.utils.set_random_seed(3)
    assert same(alone, weights_of(small_model()))


# slow: two full EfficientNet-B0 builds (about 7 s).
@pytest.mark.slow
def test_random_weights_follow_from_the_seed_while_other_threads_draw_random_numbers():
    spec = ModelSpec.of("efficientnet_b0", "random", "avg", 3)
    assert same(*built_alone_and_beside_a_drawing_thread(lambda: build_backbone(spec)))
