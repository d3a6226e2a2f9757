"""int8's calibration sample: the URIs the launching process picks once, and the images
each worker process loads from them to quantise the same model as every other."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np

from pipeline.inputs import Decoding
from pipeline.models.engines import MIN_CALIBRATION_IMAGES, EngineUnavailableError

_LOG = logging.getLogger(__name__)

# The first images of the input that calibrate int8. 100 is the sample measured (docs/
# engine.md): ResNet50's recall@10 against float32 is 0.954 with it, close to the 0.95 the
# precision is offered on, so fewer would be a risk; more cost every worker process
# calibration time (about 0.15 s an image for ResNet50, 0.9 s for CLIP B/16 on 2 cores).
CALIBRATION_IMAGES = 100


def sample_digest(uris: tuple[str, ...]) -> str:
    """sha256 of the sample's URIs in order, one a line: what the run records of it."""
    return hashlib.sha256("".join(f"{uri}\n" for uri in uris).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CalibrationSample:
    """The sample's URIs, and how the load step reads and decodes each (the run's)."""

    uris: tuple[str, ...]
    decoding: Decoding

    @property
    def digest(self) -> str:
        return sample_digest(self.uris)

    def load(self) -> np.ndarray:
        """The images that read and decode, in the sample's order, as one uint8 array; the
        others are skipped (logged). EngineUnavailableError if fewer than
        MIN_CALIBRATION_IMAGES decode."""
        images, failed = [], []
        for uri, loaded in zip(self.uris, self.decoding.load_all(list(self.uris)), strict=True):
            if isinstance(loaded, Exception):
                failed.append(f"{uri} ({type(loaded).__name__}: {loaded})")
            else:
                images.append(loaded.pixels)
        if failed:
            _LOG.warning(
                "--precision int8: %d of %d calibration images failed to load, such as %s",
                len(failed),
                len(self.uris),
                failed[0],
            )
        if len(images) < MIN_CALIBRATION_IMAGES:
            shown = f", such as {failed[0]}" if failed else ""
            raise EngineUnavailableError(
                f"--precision int8: {len(images)} of the input's first {len(self.uris)} "
                f"images loaded{shown}; calibration needs at least {MIN_CALIBRATION_IMAGES}: "
                "put images that load first in the input, or use --precision float32"
            )
        return np.stack(images)
