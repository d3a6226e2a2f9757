"""Random weights that follow from the seed alone, whatever the process's other threads do."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator

_ONE_BUILD_AT_A_TIME = threading.Lock()


@contextlib.contextmanager
def keras_seed(seed: int) -> Iterator[None]:
    """Models built inside get the weights keras.utils.set_random_seed(seed) gives a
    process that does nothing else.

    Keras draws each initialiser's seed from Python's global `random`
    (keras/src/random/seed_generator.py, make_default_seed), and Beam's worker threads
    draw from it too (element-size sampling, runners/worker/opcounters.py): a bundle
    decoding in another thread would change the weights. So the draws come from a
    generator of their own, in the state the seed gives the global one.
    """
    import keras
    from keras.src.random import seed_generator

    with _ONE_BUILD_AT_A_TIME:
        keras.utils.set_random_seed(seed)
        shared = seed_generator.python_random
        seed_generator.python_random = random.Random(seed)
        try:
            yield
        finally:
            seed_generator.python_random = shared
