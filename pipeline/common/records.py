"""The small records that travel between the pipeline's stages."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

# Stages a failure can be recorded at, in pipeline order.
STAGES = ("read", "load", "extract", "store")
# The tag of every step's dead-letter output (Failure records).
FAILED = "failed"

_MAX_MESSAGE = 2000
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Labels:
    """An image's zero-shot labels (--zero_shot_labels): the best label and its score, and the
    best few, best first."""

    label: str
    score: float
    top: tuple[str, ...]
    top_scores: tuple[float, ...]


@dataclass(frozen=True)
class ImageKey:
    """Identifies an image through inference: its URI, source size, the input's kept
    columns (--keep_columns, in that order), with --map a thumbnail, once labelled
    (--zero_shot_labels) its labels, and once scored (--score_head) its scores, in the
    heads' order."""

    uri: str
    width: int
    height: int
    thumbnail: bytes | None = field(default=None, compare=False, repr=False)
    columns: tuple[str, ...] = field(default=(), compare=False)
    labels: Labels | None = field(default=None, compare=False)
    scores: tuple[float, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Failure:
    """One input that could not be embedded, and why: a dead-letter line."""

    uri: str
    stage: str
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, uri: str, stage: str, error: BaseException) -> Failure:
        # Pillow names the file object it read (<_io.BytesIO object at 0x7f...>): the URI
        # says which image, and the address differs on every run.
        message = _OBJECT_REPR.sub(uri, str(error)) or repr(error)
        return cls(uri, stage, type(error).__name__, message[:_MAX_MESSAGE])

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)
