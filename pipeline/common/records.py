"""The small records that travel between the pipeline's stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Stages a failure can be recorded at, in pipeline order.
STAGES = ("read", "load", "extract", "store")
# The tag of every step's dead-letter output (Failure records).
FAILED = "failed"

_MAX_MESSAGE = 2000


@dataclass(frozen=True)
class ImageKey:
    """Identifies an image through inference: its URI, source size, the input's kept
    columns (--keep_columns, in that order) and, with --map, a thumbnail."""

    uri: str
    width: int
    height: int
    thumbnail: bytes | None = field(default=None, compare=False, repr=False)
    columns: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Failure:
    """One input that could not be embedded, and why: a dead-letter line."""

    uri: str
    stage: str
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, uri: str, stage: str, error: BaseException) -> Failure:
        message = str(error) or repr(error)
        return cls(uri, stage, type(error).__name__, message[:_MAX_MESSAGE])

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)
