"""The pipeline's steps in-process, Beam style: TestPipeline + assert_that, no full run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.testing.util import assert_that, equal_to
from support import PHOTO_PATHS, local_pipeline, make_bad_inputs

from pipeline.common.records import STAGES, Failure, ImageKey
from pipeline.inputs.images import Resize, decode
from pipeline.inputs.loading import Decoding, LoadImages
from pipeline.models.engines import Resolved
from pipeline.models.extraction import ExtractEmbeddings
from pipeline.models.handler import Embedded
from pipeline.outputs.naming import RUN_ID_PATTERN, new_run_id
from pipeline.outputs.sinks import WriteFailures
from pipeline.run.summary import RunFailedError, check, summarise

SIZE = 224
# What MeanColourHandler says ran, as each engine's embedder says it.
MEAN_COLOUR = Resolved("mean_colour", "float32")


def failure_fields(failure: Failure) -> tuple[str, str, str]:
    return failure.uri, failure.stage, failure.error_type


# --- Load -------------------------------------------------------------------------------


def test_load_sends_each_bad_input_to_the_dead_letter_with_its_error_type(tmp_path):
    bad = make_bad_inputs(tmp_path)
    # Web URIs on loopback addresses only: were the address check broken, nothing off
    # this machine could be asked (port 9: nothing listens).
    refused = {
        "http://127.0.0.1:9/cat.jpg": "BlockedAddressError",
        "https://localhost:9/computeMetadata/v1/": "BlockedAddressError",
        "s3://bucket/cat.jpg": "UnsupportedUriError",
    }
    expected_failures = [(path, "load", kind) for path, kind in bad.values()]
    expected_failures += [(uri, "load", kind) for uri, kind in refused.items()]
    good = PHOTO_PATHS[:3]

    def keys_and_shapes(keyed: tuple[ImageKey, np.ndarray]) -> tuple[str, tuple, str]:
        key, pixels = keyed
        return key.uri, pixels.shape, str(pixels.dtype)

    with local_pipeline() as p:
        uris = p | beam.Create([*good, *(path for path, _ in bad.values()), *refused])
        loaded = uris | LoadImages(Decoding(Resize(SIZE), jpeg_draft=False))
        assert_that(
            loaded["images"] | "Keys" >> beam.Map(keys_and_shapes),
            equal_to([(uri, (SIZE, SIZE, 3), "uint8") for uri in good]),
            label="images",
        )
        assert_that(
            loaded["failed"] | "Fields" >> beam.Map(failure_fields),
            equal_to(expected_failures),
            label="failed",
        )


def test_on_a_remote_runner_local_paths_go_to_the_dead_letter():
    good = PHOTO_PATHS[:2]

    def messages_say_why(failures: list[Failure]) -> None:
        assert len(failures) == len(good)
        for failure in failures:
            assert "local path" in failure.message and "remote runner" in failure.message
            assert "gs://" in failure.message

    with local_pipeline() as p:
        uris = p | beam.Create(good)
        remote = uris | "Remote" >> LoadImages(Decoding(Resize(SIZE), False, local_paths=False))
        local = uris | "Local" >> LoadImages(Decoding(Resize(SIZE), False, local_paths=True))
        assert_that(remote["images"], equal_to([]), label="remote images")
        assert_that(
            remote["failed"] | "Remote fields" >> beam.Map(failure_fields),
            equal_to([(uri, "load", "UnsupportedUriError") for uri in good]),
            label="remote failed",
        )
        assert_that(remote["failed"], messages_say_why, label="remote messages")
        assert_that(
            local["images"] | "Local URIs" >> beam.Map(lambda keyed: keyed[0].uri),
            equal_to(good),
            label="local images",
        )


def test_loaded_pixels_are_the_decoders():
    def pixels_match(keyed: list[tuple[ImageKey, np.ndarray]]) -> None:
        [(key, pixels)] = keyed
        with open(key.uri, "rb") as handle:
            expected = decode(handle.read(), Resize(SIZE), False)
        assert (key.width, key.height) == (expected.width, expected.height)
        assert np.array_equal(pixels, expected.pixels)

    with local_pipeline() as p:
        loaded = p | beam.Create(PHOTO_PATHS[:1]) | LoadImages(Decoding(Resize(SIZE), False))
        assert_that(loaded["images"], pixels_match)


# --- Extract ----------------------------------------------------------------------------


class MeanColour:
    """A stand-in model: an image's mean colour (Beam shares models by weak reference)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image.reshape(-1, 3).mean(axis=0).astype(np.float32)


class MeanColourHandler(ModelHandler[np.ndarray, np.ndarray, MeanColour]):
    """Runs MeanColour over each batch, or raises fail_with for every batch."""

    def __init__(self, fail_with: Exception | None = None):
        super().__init__(min_batch_size=2, max_batch_size=2)
        self._fail_with = fail_with

    def load_model(self) -> MeanColour:
        return MeanColour()

    def run_inference(
        self, batch: Sequence[np.ndarray], model: MeanColour, inference_args=None
    ) -> Iterable[Embedded]:
        if self._fail_with is not None:
            raise self._fail_with
        return [Embedded(model(image), MEAN_COLOUR) for image in batch]


def keyed_images(count: int) -> list[tuple[ImageKey, np.ndarray]]:
    generator = np.random.default_rng(7)
    return [
        (ImageKey(f"gs://b/{i}.jpg", 640, 480), generator.integers(0, 256, (8, 8, 3), np.uint8))
        for i in range(count)
    ]


def test_extract_keeps_each_embedding_with_its_key():
    inputs = keyed_images(5)
    expected = {key.uri: image.reshape(-1, 3).mean(axis=0) for key, image in inputs}

    def embeddings_match(keyed: list[tuple[ImageKey, np.ndarray]]) -> None:
        assert sorted(key.uri for key, _ in keyed) == sorted(expected)
        for key, embedding in keyed:
            assert np.allclose(embedding, expected[key.uri], rtol=1e-6)

    with local_pipeline() as p:
        extracted = p | beam.Create(inputs) | ExtractEmbeddings(MeanColourHandler())
        assert_that(extracted["embeddings"], embeddings_match, label="embeddings")
        assert_that(extracted["failed"], equal_to([]), label="failed")
        ran = [[{"engine": "mean_colour", "precision": "float32"}]]
        assert_that(extracted["engines_ran"], equal_to(ran), label="engines ran")


def test_a_failed_batch_is_one_failure_per_image_of_it():
    inputs = keyed_images(5)
    handler = MeanColourHandler(fail_with=MemoryError("out of memory in the model"))
    expected = [(key.uri, "extract", "MemoryError") for key, _ in inputs]

    def messages_name_the_error(failures: list[Failure]) -> None:
        assert all("out of memory in the model" in failure.message for failure in failures)

    with local_pipeline() as p:
        extracted = p | beam.Create(inputs) | ExtractEmbeddings(handler)
        assert_that(extracted["embeddings"], equal_to([]), label="embeddings")
        assert_that(extracted["engines_ran"], equal_to([[]]), label="engines ran")
        fields = extracted["failed"] | beam.Map(failure_fields)
        assert_that(fields, equal_to(expected), label="failed")
        assert_that(extracted["failed"], messages_name_the_error, label="messages")


# --- The dead letter ----------------------------------------------------------------------


def test_write_failures_writes_json_lines_in_its_runs_shards_only(tmp_path):
    # Another run's dead letter is replaced only when this run publishes (publish.py).
    earlier = tmp_path / f"failures-{new_run_id(0)}-00000-of-00001.jsonl"
    earlier.write_text('{"uri": "from an earlier run"}\n')
    failures = [
        Failure("gs://b/a.jpg", "load", "UnidentifiedImageError", "cannot identify image file"),
        Failure('gs://b/ü, "quoted".jpg', "store", "OSError", "disk full\nsecond line"),
        Failure("row 3", "read", "MissingUri", "no URI in column 0"),
    ]
    run_id = new_run_id(1e9)
    with local_pipeline() as p:
        _ = p | beam.Create(failures) | WriteFailures(str(tmp_path), run_id)
    shards = sorted(tmp_path.glob(f"failures-{run_id}-*.jsonl"))
    assert shards and earlier.read_text() == '{"uri": "from an earlier run"}\n'
    shard_name = re.compile(rf"failures-{run_id}-\d{{5}}-of-\d{{5}}\.jsonl")
    assert all(shard_name.fullmatch(shard.name) for shard in shards)
    assert re.fullmatch(RUN_ID_PATTERN, run_id)
    lines = [line for shard in shards for line in shard.read_text().splitlines()]
    written = sorted((Failure(**json.loads(line)) for line in lines), key=failure_fields)
    assert written == sorted(failures, key=failure_fields)


# --- The summary, as pure functions -------------------------------------------------------

CONTEXT = {"input": "images.csv", "max_failure_fraction": 0.1, "max_failures": 0,
           "outputs": {"failures": "out/failures-*.jsonl"}}  # fmt: skip


def summary_of(rows_with_uri, duplicates, skipped, embedded, failed_by_stage, **context):
    failures = [
        Failure(f"gs://b/{stage}-{index}.jpg", stage, "OSError", "unreadable")
        for stage, count in failed_by_stage.items()
        for index in range(count)
    ]
    return summarise(
        None,
        rows_with_uri=rows_with_uri,
        duplicates=duplicates,
        skipped=skipped,
        embedded=embedded,
        failed_by_stage=failed_by_stage,
        first_failures=sorted(failures, key=lambda failure: failure.uri)[:3],
        context={**CONTEXT, **context},
        started_at=1_000_000_000.0,
    )


def test_summarise_adds_up_independent_counts():
    # 100 rows with a URI + 2 without: 5 repeats, 10 done before, 80 embedded, 7 failed.
    summary = summary_of(100, 5, 10, 80, {"read": 2, "load": 3, "extract": 2})
    assert summary["rows_read"] == 102
    assert summary["failed"] == 7
    assert summary["failed_by_stage"] == {"read": 2, "load": 3, "extract": 2, "store": 0}
    assert list(summary["failed_by_stage"]) == list(STAGES)
    assert summary["reconciled"] is True
    assert summary["failure_fraction"] == round(7 / (102 - 5 - 10), 6)
    assert summary["input"] == "images.csv"
    check(summary)


def test_a_lost_image_shows_as_counts_that_do_not_reconcile():
    summary = summary_of(100, 5, 10, 79, {"read": 2, "load": 3, "extract": 2})
    assert summary["reconciled"] is False
    with pytest.raises(RunFailedError, match="counts do not reconcile"):
        check(summary)


def test_check_refuses_an_empty_input_and_a_spent_failure_budget():
    with pytest.raises(RunFailedError, match="lists no image URIs"):
        check(summary_of(0, 0, 0, 0, {}))
    over = summary_of(10, 0, 0, 8, {"load": 2})
    assert over["failure_fraction"] == 0.2
    with pytest.raises(RunFailedError, match=r"2 of 10 inputs failed \(20.0% > "):
        check(over)
    check(summary_of(10, 0, 0, 9, {"load": 1}))  # 10% is within a 0.1 budget


def test_a_run_fails_only_past_both_budgets_and_always_when_nothing_embeds():
    # A person's 14 rows with one typo: 7% is over the fraction, not over the count.
    check(summary_of(14, 0, 0, 13, {"load": 1}, max_failure_fraction=0.05, max_failures=3))
    check(summary_of(14, 0, 0, 11, {"load": 3}, max_failure_fraction=0.05, max_failures=3))
    with pytest.raises(
        RunFailedError, match=r"4 of 14 inputs failed .* more than --max_failures 3"
    ):
        check(summary_of(14, 0, 0, 10, {"load": 4}, max_failure_fraction=0.05, max_failures=3))
    # A job of millions still fails at 5%, however many failures the count allows.
    over = summary_of(1_000_000, 0, 0, 949_000, {"load": 51_000}, max_failures=3)
    with pytest.raises(RunFailedError, match="51000 of 1000000 inputs failed"):
        check({**over, "max_failure_fraction": 0.05})
    # Nothing embedded: a wrong bucket fails, however few its rows.
    with pytest.raises(RunFailedError, match="none of the 2 inputs could be embedded"):
        check(summary_of(2, 0, 0, 0, {"load": 2}, max_failures=3))


def test_a_failed_budget_names_the_first_failures_and_how_to_list_them_all():
    with pytest.raises(RunFailedError) as failed:
        check(summary_of(10, 0, 0, 6, {"read": 1, "load": 4}))
    lines = str(failed.value).splitlines()
    assert lines[0].endswith("the first 3 by URI:")
    assert lines[1:] == [
        "  gs://b/load-0.jpg: OSError: unreadable",
        "  gs://b/load-1.jpg: OSError: unreadable",
        "  gs://b/load-2.jpg: OSError: unreadable",
        "  list them all: cat out/failures-*.jsonl",
    ]


def test_a_dead_letter_message_names_the_image_not_a_file_object():
    import io

    from PIL import Image, UnidentifiedImageError

    with pytest.raises(UnidentifiedImageError) as refused:
        Image.open(io.BytesIO(b"this is a text file, not a JPEG\n"))
    assert " object at 0x" in str(refused.value)  # what Pillow says
    failure = Failure.from_exception("gs://b/notes.jpg", "load", refused.value)
    assert failure.message == "cannot identify image file gs://b/notes.jpg"
