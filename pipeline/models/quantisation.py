"""int8 by NNCF: an OpenVINO model quantised after training, its ranges set from the
activations of calibration images."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import numpy as np

# Fewer calibration images than this that decode: the quantisation ranges would rest on
# too few images to trust, so --precision int8 fails instead.
MIN_CALIBRATION_IMAGES = 8


def quantize(model: Any, calibration: np.ndarray, *, transformer: bool = False) -> Any:
    """The OpenVINO model with NNCF's post-training int8 quantisation, its ranges set from
    the activations of the calibration images (uint8, one inference each); transformer:
    NNCF's model type for attention models (its ignored patterns for them, SmoothQuant).
    The same model and images give the same quantised model (tests/test_int8.py)."""
    import nncf
    from nncf.common.logging import nncf_logger

    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    kwargs = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    # NNCF logs and draws its progress bars on stdout, where the command lines print their
    # results (a run's summary, a search's --json rows): both go to stderr instead.
    for handler in nncf_logger.handlers:
        if type(handler) is logging.StreamHandler:
            handler.setStream(sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(model, dataset, subset_size=len(calibration), **kwargs)
