"""The TensorFlow engine: the Keras function run in float32 as traced, or in mixed float16
through grappler's rewrite of the same graph."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.models.embedder import FLOAT16, FLOAT32, TENSORFLOW, EmbeddingFunction

# Grappler's mixed-precision graph rewrites (tensorflow/core/protobuf/rewriter_config.proto).
# auto_mixed_precision turns the ops on its allow list (Conv2D, MatMul, Einsum...) and the
# ops between them to float16 and keeps those on its deny list (Softmax, Exp, Pow, Sum,
# Mean, the norms' reductions...) in float32 (core/grappler/optimizers/
# auto_mixed_precision_lists.h); it acts only where a GPU of compute capability 7.0 or more
# is visible (auto_mixed_precision.cc: HasFastFP16Support, kMinGPUArch = {7, 0}) and logs
# "No (suitable) GPUs detected" otherwise. auto_mixed_precision_cpu is the same rewrite with
# the same lists for a CPU (AutoMixedPrecisionMode::CPU, there to test it without a GPU):
# the CPU has no float16 kernels for the allow list, so those ops compute in float32
# between casts, and the values between ops are rounded to float16 as on a GPU.
MIXED_FLOAT16_GPU = "auto_mixed_precision"
MIXED_FLOAT16_CPU_EMULATION = "auto_mixed_precision_cpu"


@contextlib.contextmanager
def _rewritten(config: Any) -> Iterator[None]:
    """TensorFlow functions called in this block, on this thread, are optimized with
    `config` (the process's config with one grappler rewrite turned on).

    The option could be set for the whole process (tf.config.optimizer.
    set_experimental_options({"auto_mixed_precision": True})), but that would rewrite every
    function the process calls afterwards, a float32 embedder's included, and it does not
    take auto_mixed_precision_cpu (eager/context.py maps only auto_mixed_precision and the
    oneDNN bfloat16 ones). Grappler optimizes a function once per config it is called with,
    so each call here runs the rewritten graph and a call outside runs the plain one.
    """
    from tensorflow.python.eager import context

    eager = context.context()
    before = eager.function_call_options
    eager.function_call_options = context.FunctionCallOptions(
        executor_type=before.executor_type, config_proto=config
    )
    try:
        yield
    finally:
        eager.function_call_options = before


class TensorFlowEmbedder:
    """The Keras function run by TensorFlow: float32 as traced, or float16 through grappler's
    mixed-precision rewrite of the same graph (no change to the model or its weights)."""

    engine = TENSORFLOW

    def __init__(
        self,
        function: EmbeddingFunction,
        precision: str = FLOAT32,
        rewrite: str = MIXED_FLOAT16_GPU,
    ):
        self._function = function
        self.precision = precision
        self._config = None  # a ConfigProto with the rewrite on, for float16
        if precision == FLOAT16:
            from tensorflow.core.protobuf import rewriter_config_pb2
            from tensorflow.python.eager import context

            config = context.context().config
            setattr(
                config.graph_options.rewrite_options, rewrite, rewriter_config_pb2.RewriterConfig.ON
            )
            self._config = config

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._config is None:
            return self._function(images)
        with _rewritten(self._config):
            return self._function(images)
