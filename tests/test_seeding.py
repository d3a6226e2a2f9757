"""Random weights follow from the seed alone, while other threads of the process draw
random numbers (as Beam's worker threads do)."""

from __future__ import annotations

import random
import threading

import numpy as np

from pipeline.models.backbones import ModelSpec, build_backbone


def weights_of(model) -> list[np.ndarray]:
    return [np.asarray(weight) for weight in model.get_weights()]


def test_random_weights_follow_from_the_seed_while_other_threads_draw_random_numbers():
    spec = ModelSpec.of("efficientnet_b0", "random", "avg", 3)
    alone = weights_of(build_backbone(spec))
    stop = threading.Event()

    def draw():  # as Beam's element-size sampling does in a bundle's thread
        while not stop.is_set():
            random.random()

    drawing = threading.Thread(target=draw)
    drawing.start()
    try:
        beside = weights_of(build_backbone(spec))
    finally:
        stop.set()
        drawing.join()
    assert len(alone) == len(beside)
    assert all(np.array_equal(a, b) for a, b in zip(alone, beside, strict=True))
