"""How a run's embeddings were made: one typed record, built once from the options,
written into every file that says so and read back from any of them.

Each field declares where it is recorded and whether runs that differ in it may share an
output. A new field is one line here: the summary, the shards' metadata, the .npy
metadata, the BigQuery table's description, the --skip_existing checks and search all
follow from the declaration.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.inputs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, Decoding
from pipeline.models import ModelSpec

# Where a field is recorded.
IN_SUMMARY = "summary"  # summary.json
IN_SHARDS = "shards"  # each Parquet shard's schema metadata (strings)
IN_NPY_METADATA = "npy"  # an npy run's embeddings/RUN/metadata.json
IN_TABLE = "table"  # the BigQuery table's description
_BESIDE_EMBEDDINGS = (IN_SUMMARY, IN_SHARDS, IN_NPY_METADATA)
_EVERYWHERE = (*_BESIDE_EMBEDDINGS, IN_TABLE)  # a field that every place records

_RANDOM_SEED = re.compile(r"random \(seed (\d+)")


def _recorded(*where: str, named: str = "", compared: bool = False, default: Any = None):
    """A field recorded in `where`. compared: embeddings that differ in it are not
    comparable, so they never share an output or a table; named: what an error calls it.
    default: what a record that predates the field meant (None: it has always been there)."""
    return dataclasses.field(
        metadata={"where": where, "named": named, "compared": compared, "default": default}
    )


@dataclass(frozen=True)
class Provenance:
    """How a run's embeddings were made. The precision is --precision as asked (bfloat16
    and float32 embeddings differ in the third decimal); the engine is not compared
    (OpenVINO float32 equals TensorFlow's to 1e-4). An int8 run records its calibration
    sample's digest: a model quantised on other images has other quantisation ranges."""

    model: str = _recorded(*_EVERYWHERE, named="--model", compared=True)
    weights: str = _recorded(*_EVERYWHERE, named="--weights", compared=True)  # as described
    seed: int = _recorded(IN_SUMMARY, default=0)
    pretrained: bool = _recorded(IN_SUMMARY)
    pooling: str = _recorded(*_EVERYWHERE, named="--pooling", compared=True)
    resize: str = _recorded(*_EVERYWHERE, named="--resize", compared=True)  # Resize.describe()
    engine: str = _recorded(IN_SUMMARY, IN_SHARDS, default="tensorflow")  # as asked
    precision: str = _recorded(
        *_BESIDE_EMBEDDINGS, named="--precision", compared=True, default="float32"
    )
    calibration: str = _recorded(  # int8's sample digest (models.sample_digest); else ""
        *_BESIDE_EMBEDDINGS, named="the calibration sample", compared=True, default=""
    )
    jpeg_draft: bool = _recorded(IN_SUMMARY)
    max_image_pixels: int = _recorded(IN_SUMMARY, default=DEFAULT_MAX_IMAGE_PIXELS)
    max_image_bytes: int = _recorded(IN_SUMMARY, default=DEFAULT_MAX_IMAGE_BYTES)
    embedding_shape: tuple[int, ...] = _recorded(
        *_EVERYWHERE, named="the embedding shape", compared=True, default=()
    )
    # NAME=sha256 of each --score_head (models.recorded_heads): its scores are columns.
    score_heads: str = _recorded(*_EVERYWHERE, named="--score_head", compared=True, default="")

    @classmethod
    def made(
        cls,
        spec: ModelSpec,
        decoding: Decoding,
        engine: str,
        precision: str,
        calibration: str,
        shape: tuple[int, ...],
        score_heads: str = "",
    ) -> Provenance:
        """The record of a run that embeds with spec, decodes as decoding says, and asks
        for engine and precision (each worker process resolves auto)."""
        return cls(
            model=spec.model,
            weights=spec.describe_weights(),
            seed=spec.seed,
            pretrained=spec.pretrained,
            pooling=spec.pooling,
            resize=decoding.resize.describe(),
            engine=engine,
            precision=precision,
            calibration=calibration,
            jpeg_draft=decoding.jpeg_draft,
            max_image_pixels=decoding.max_pixels,
            max_image_bytes=decoding.max_bytes,
            embedding_shape=tuple(int(size) for size in shape),
            score_heads=score_heads,
        )

    @classmethod
    def read(cls, recorded: Mapping[str, Any]) -> Provenance:
        """The record a summary.json holds, also one an earlier version wrote: fields it
        lacks take what they meant then. KeyError, TypeError or ValueError for a summary
        that does not say how its embeddings were made."""
        found = cls.recorded_fields(recorded)
        weights = str(found["weights"])
        if "seed" not in found and weights.startswith("random"):
            # Summaries before the seed had its own key said it only in the weights' text.
            seed = _RANDOM_SEED.match(weights)
            found["seed"] = int(seed.group(1)) if seed else 0
        found.setdefault("pretrained", not weights.startswith("random"))
        for field in dataclasses.fields(cls):
            if field.name not in found:
                if field.metadata["default"] is None:
                    raise KeyError(field.name)
                found[field.name] = field.metadata["default"]
        return cls(**found)

    def written(self, where: str) -> dict[str, Any]:
        """The fields recorded in `where`, as JSON values, in declaration order. An empty
        value is not recorded: the calibration of a run that is not int8, or a field a
        summary read back did not record."""
        return {
            field.name: _json_value(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if where in field.metadata["where"] and getattr(self, field.name) not in ("", ())
        }

    def shard_metadata(self) -> dict[str, str]:
        """The Parquet shards' schema metadata: every value a string (the shape as JSON)."""
        return {
            name: json.dumps(value) if isinstance(value, list) else str(value)
            for name, value in self.written(IN_SHARDS).items()
        }

    def differences(self, recorded: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The compared fields that recorded (read from any place) gives otherwise than
        this record, as name -> (theirs, ours) JSON values; a field that either side
        does not record (an earlier version's, a calibration of a run not int8) is not
        compared."""
        recorded_here = self.recorded_fields(recorded)
        theirs = {name: _json_value(value) for name, value in recorded_here.items()}
        ours = self.written(IN_SUMMARY)
        return {
            field.name: (theirs[field.name], ours[field.name])
            for field in dataclasses.fields(self)
            if field.metadata["compared"]
            and field.name in theirs
            and field.name in ours
            and theirs[field.name] != ours[field.name]
        }

    @classmethod
    def recorded_fields(cls, recorded: Mapping[str, Any]) -> dict[str, Any]:
        """The fields that recorded gives, from any place, with their types: a shard's
        strings and JSON shape, the summary's JSON values alike. Other keys are left out."""
        found = {}
        for field in dataclasses.fields(cls):
            if field.name not in recorded:
                continue
            value = recorded[field.name]
            if field.type == "tuple[int, ...]":
                sizes = json.loads(value) if isinstance(value, str) else value
                value = tuple(int(size) for size in sizes)
            elif field.type == "int":
                value = int(value)
            elif field.type == "bool":
                value = value if isinstance(value, bool) else str(value) == "True"
            else:
                value = str(value)
            found[field.name] = value
        return found

    @classmethod
    def fields_in(cls, where: str) -> tuple[str, ...]:
        """The names of the fields recorded in `where`."""
        return tuple(
            field.name for field in dataclasses.fields(cls) if where in field.metadata["where"]
        )

    @classmethod
    def always_in(cls, where: str) -> tuple[str, ...]:
        """The fields `where` records whatever the run: those with no default for an
        earlier record (the others may be empty, and an empty value is not recorded)."""
        return tuple(
            field.name
            for field in dataclasses.fields(cls)
            if where in field.metadata["where"] and field.metadata["default"] is None
        )

    def model_spec(self) -> ModelSpec:
        """The spec that embeds as this run did (a query image, say)."""
        weights = "random" if self.weights.startswith("random") else self.weights
        return ModelSpec(self.model, weights, self.pooling, int(self.seed))


def named(field: str) -> str:
    """What an error calls a compared field (--model, the embedding shape)."""
    return _FIELDS[field].metadata["named"] or field


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


_FIELDS = {field.name: field for field in dataclasses.fields(Provenance)}
