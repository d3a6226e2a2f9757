"""What worker threads and processes must not change: the cores each process's engine may
use, for each runner layout (OpenVINO compiled for that many threads giving the same
embeddings), and random weights while other threads run."""

from __future__ import annotations

import os
import random
import threading

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from support import relative_error

from pipeline.models.backbones import ModelSpec, build_backbone
from pipeline.models.engines import FLOAT32, OpenVinoEmbedder
from pipeline.models.handler import EmbeddingFunction
from pipeline.workers import engine_threads

LOCAL = ["--runner", "FnApiRunner"]
DATAFLOW = ["--runner", "DataflowRunner"]


@pytest.mark.parametrize(
    ("argv", "cpus", "threads"),
    [
        ([*LOCAL, "--direct_running_mode", "in_memory"], 8, 0),
        ([*LOCAL, "--direct_running_mode", "multi_threading", "--direct_num_workers", "4"], 8, 0),
        ([*LOCAL, "--direct_running_mode", "multi_processing", "--direct_num_workers", "0"], 8, 1),
        ([*LOCAL, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], 8, 4),
        ([*LOCAL, "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], 3, 1),
        ([*LOCAL, "--direct_running_mode", "multi_processing", "--direct_num_workers", "1"], 8, 0),
        (DATAFLOW, 8, 1),
        ([*DATAFLOW, "--experiments", "no_use_multiple_sdk_containers"], 8, 0),
    ],
)
def test_each_process_gets_its_share_of_the_cores(argv, cpus, threads):
    assert engine_threads(PipelineOptions(argv), cpus) == threads


def small_convolution() -> EmbeddingFunction:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    scaled = keras.layers.Rescaling(1 / 255)(inputs)
    features = keras.layers.Conv2D(16, 3, activation="relu")(scaled)
    return EmbeddingFunction(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(features)))


def test_openvino_compiled_for_one_thread_uses_one_and_embeds_the_same():
    function = small_convolution()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    reference = function(images)
    one, every = OpenVinoEmbedder(function, FLOAT32, 1), OpenVinoEmbedder(function, FLOAT32)
    assert one.threads == 1
    assert every.threads == os.cpu_count()
    for embedder in (one, every):
        assert relative_error(embedder(images), reference) <= 1e-4


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
