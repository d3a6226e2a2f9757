"""How an output's embeddings were made, read back from its summary.json: the model, its
weights and the load step's settings that a query must be embedded with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.common import read_json
from pipeline.inputs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, Decoding, Resize
from pipeline.models import BACKBONES, ModelSpec
from pipeline.outputs import (
    FORMATS,
    SUMMARY,
    JournalError,
    UnfinishedPublishError,
    named_runs,
    output_path,
    roll_forward,
)

_RANDOM_SEED = re.compile(r"random \(seed (\d+)")
# What each shard's schema metadata records; a shard that says otherwise was not made
# as the summary says.
SHARD_METADATA = ("model", "weights", "pooling", "resize")


class SearchError(ValueError):
    """A search that cannot run; its message is the one line the command prints."""


@dataclass(frozen=True)
class Recorded:
    """An output and how its embeddings were made."""

    output: str
    spec: ModelSpec
    resize: Resize
    jpeg_draft: bool
    max_pixels: int
    max_bytes: int
    keep_columns: tuple[str, ...]
    metadata: dict[str, str]  # model, weights, pooling, resize as the summary gives them
    engine: str = "tensorflow"  # what embedded the images, so that a query image is alike
    precision: str = "float32"
    input: str = ""  # the run's --input, where int8's calibration sample came from
    calibration: str = ""  # int8's calibration sample digest (models.sample_digest)
    runs: tuple[str, ...] | None = None  # the runs whose shards count; None: every run's

    @property
    def decoding(self) -> Decoding:
        """How the run read and decoded its images, so that a query image is alike (a
        query's path is the user's own, so a local one may be read)."""
        return Decoding(self.resize, self.jpeg_draft, self.max_pixels, self.max_bytes)

    @property
    def shards(self) -> list[str]:
        """Globs of the output's Parquet shards, in either layout (of these, the runs'
        the summary names count)."""
        return FORMATS["parquet"].record_files(self.output)


def read_recorded(output: str) -> Recorded:
    """The output's record; SearchError, saying why, for an output that has none, or one
    this version cannot embed a query for. A publish that stopped midway is finished
    first, so that the summary and the shards agree."""
    try:
        roll_forward(output)
    except (JournalError, UnfinishedPublishError) as error:
        raise SearchError(str(error)) from error
    path = output_path(output, SUMMARY)
    try:
        summary = read_json(path)
    except Exception as error:
        raise SearchError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    if summary is None:
        raise SearchError(
            f"{output} holds no {SUMMARY}: not an output of a finished run (give the --output "
            "of a run that passed)"
        )
    try:
        return _recorded(output, summary)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, SearchError):
            raise
        raise SearchError(
            f"{path} does not say how the embeddings were made ({error!r})"
        ) from error


def _recorded(output: str, summary: dict) -> Recorded:
    if summary.get("output_format") != "parquet":
        raise SearchError(
            f"{output} holds --output_format {summary.get('output_format')} embeddings; "
            "search reads Parquet outputs (run with --output_format parquet)"
        )
    model = summary["model"]
    if model not in BACKBONES:
        raise SearchError(f"{output} was made by {model!r}, a model this version does not know")
    weights = summary["weights"]
    seed = summary.get("seed", 0)
    if weights.startswith("random"):
        # Summaries before the seed had its own key said it only in the weights' text.
        found = _RANDOM_SEED.match(weights)
        seed = summary.get("seed", int(found.group(1)) if found else 0)
        weights = "random"
    spec = ModelSpec(model, weights, summary["pooling"], int(seed))
    resize = _resize(spec, summary["resize"])
    return Recorded(
        output=output,
        spec=spec,
        resize=resize,
        jpeg_draft=bool(summary["jpeg_draft"]),
        # Summaries before the pixel limit had its own key: the option's default, then as now.
        max_pixels=int(summary.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)),
        max_bytes=int(summary.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES)),
        keep_columns=tuple(summary.get("keep_columns", ())),
        metadata={key: str(summary[key]) for key in SHARD_METADATA},
        **_engine(summary),
        input=str(summary.get("input", "")),
        calibration=str(summary.get("calibration", "")),
        runs=named_runs(summary, output, "parquet"),
    )


def _engine(summary: dict) -> dict[str, str]:
    """The engine and precision the run's workers used: the one engine counter of a local
    run's metrics, else the options it asked for (resolved here as a worker would)."""
    ran = [
        name.split("_", 2)[1:]
        for name, count in summary.get("metrics", {}).items()
        if name.startswith("engine_") and name != "engine_fallback_tensorflow" and count
    ]
    if len(ran) == 1:
        engine, precision = ran[0]
        return {"engine": engine, "precision": precision}
    return {
        "engine": summary.get("engine", "tensorflow"),
        "precision": summary.get("precision", "float32"),
    }


def _resize(spec: ModelSpec, recorded: str) -> Resize:
    """The rule the run resized by: the model's own, or the --resize policy it names."""
    policy = recorded if recorded in ("squash", "center_crop") else "squash"
    resize = spec.resize(policy)
    if resize.describe() != recorded:
        raise SearchError(
            f"the output's images were resized by {recorded!r}, which {spec.model} does not do "
            f"in this version ({resize.describe()!r})"
        )
    return resize
