"""Provenance: how a run's embeddings were made, written everywhere from one record and
read back from any place."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.inputs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, Decoding
from pipeline.models import ModelSpec, embedding_shape
from pipeline.outputs import (
    IN_NPY_METADATA,
    IN_SHARDS,
    IN_SUMMARY,
    IN_TABLE,
    Provenance,
    named,
    parquet_schema,
)
from pipeline.outputs.provenance import _recorded


def made(pooling: str = "avg", precision: str = "float32", calibration: str = "") -> Provenance:
    spec = ModelSpec("resnet50", "random", pooling, 3)
    decoding = Decoding(spec.resize("squash"), jpeg_draft=False, max_pixels=5_000_000)
    return Provenance.made(spec, decoding, "auto", precision, calibration, embedding_shape(spec))


def test_a_summary_gives_back_the_record_it_was_written_from():
    record = made(precision="int8", calibration="ab" * 32)
    summary = json.loads(json.dumps(record.written(IN_SUMMARY)))
    assert Provenance.read(summary) == record
    assert record.model_spec() == ModelSpec("resnet50", "random", "avg", 3)


def test_a_summary_of_an_earlier_version_reads_as_it_meant_then():
    # Before seed, the limits, engine and precision had keys of their own.
    earlier = {
        "model": "resnet50",
        "weights": "random (seed 7, NOT pretrained: embeddings carry no meaning)",
        "pooling": "avg",
        "resize": "squash",
        "jpeg_draft": True,
        "embedding_shape": [2048],
    }
    record = Provenance.read(earlier)
    assert (record.seed, record.pretrained) == (7, False)
    assert (record.max_image_pixels, record.max_image_bytes) == (
        DEFAULT_MAX_IMAGE_PIXELS,
        DEFAULT_MAX_IMAGE_BYTES,
    )
    assert (record.engine, record.precision, record.calibration) == ("tensorflow", "float32", "")
    assert record.embedding_shape == (2048,)
    # A summary that does not say the shape (one written by hand) records none: nothing
    # is compared against it.
    shapeless = Provenance.read({k: v for k, v in earlier.items() if k != "embedding_shape"})
    assert shapeless.embedding_shape == () and "embedding_shape" not in shapeless.written(IN_TABLE)
    assert shapeless.differences(record.shard_metadata()) == {}
    with pytest.raises(KeyError, match="jpeg_draft"):
        Provenance.read({key: value for key, value in earlier.items() if key != "jpeg_draft"})


def test_each_place_records_its_fields_and_a_shard_reads_back_alike():
    record = made(precision="int8", calibration="cd" * 32)
    assert list(record.written(IN_TABLE)) == [
        "model",
        "weights",
        "pooling",
        "resize",
        "embedding_shape",
    ]
    assert "precision" in record.written(IN_NPY_METADATA)
    assert "engine" not in record.written(IN_NPY_METADATA)
    schema = parquet_schema(record.embedding_shape, record.shard_metadata())
    stored = {key.decode(): value.decode() for key, value in schema.metadata.items()}
    assert stored["embedding_shape"] == "[2048]"
    assert record.differences(stored) == {}
    assert record.differences(record.written(IN_TABLE)) == {}


def test_differences_name_each_field_that_differs_wherever_it_was_read():
    ours = made()
    shard = made(pooling="max", precision="bfloat16").shard_metadata()
    assert ours.differences(shard) == {
        "pooling": ("max", "avg"),
        "precision": ("bfloat16", "float32"),
    }
    assert [named(field) for field in ours.differences(shard)] == ["--pooling", "--precision"]
    # The engine is recorded, not compared; a calibration only one side records is not
    # compared either (precision already differs there).
    assert ours.differences(made().written(IN_SHARDS) | {"engine": "openvino"}) == {}
    int8 = made(precision="int8", calibration="ef" * 32)
    assert set(int8.differences(made(precision="int8").written(IN_SUMMARY))) == set()
    other_sample = made(precision="int8", calibration="01" * 32).written(IN_NPY_METADATA)
    assert int8.differences(other_sample) == {"calibration": ("01" * 32, "ef" * 32)}


def test_a_new_field_is_one_line():
    @dataclasses.dataclass(frozen=True)
    class WithLicence(Provenance):
        licence: str = _recorded(IN_SUMMARY, IN_SHARDS, IN_TABLE, named="--licence", compared=True)

    base = dataclasses.asdict(made())
    ours = WithLicence(**base, licence="cc0")
    theirs = WithLicence(**base, licence="cc-by")
    assert ours.written(IN_TABLE)["licence"] == "cc0"
    assert ours.shard_metadata()["licence"] == "cc0"
    assert "licence" not in ours.written(IN_NPY_METADATA)
    assert ours.differences(theirs.shard_metadata()) == {"licence": ("cc-by", "cc0")}
    assert WithLicence.read(ours.written(IN_SUMMARY)) == ours
