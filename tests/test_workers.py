"""The cores each worker process's engine may use, for each runner layout, and OpenVINO
compiled for that many threads giving the same embeddings."""

from __future__ import annotations

import os

import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from support import relative_error

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
