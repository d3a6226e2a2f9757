"""--precision int8: the calibration sample the launcher picks (the input's first URIs as the
reader takes them), its loading on a worker, NNCF's quantisation (the same model from the
same images), pipeline runs against float32 (neighbours, cosines), what a run records, and
--skip_existing's refusal of int8 embeddings calibrated on another sample."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
from apache_beam import pvalue
from support import PHOTO_PATHS, parquet_embeddings, read_parquet, run_cli, write_csv
from test_engine import (
    L4,
    THRESHOLD,
    copies,  # noqa: F401 (a fixture)
    cosines,
    float32_run,
    neighbour_run,
    neighbour_sets,
    photo_copies,  # noqa: F401 (a fixture)
    photographs,
    small_convolutional_function,
    spec_of,
)

from pipeline.inputs import Decoding
from pipeline.inputs.sources import ParseRowFn, first_uris, sniff_layout
from pipeline.job import check_earlier_outputs
from pipeline.models import CALIBRATION_IMAGES, CalibrationSample, sample_digest
from pipeline.models.engines import (
    BFLOAT16,
    FLOAT32,
    INT8,
    MIN_CALIBRATION_IMAGES,
    OPENVINO,
    EngineUnavailableError,
    OpenVinoEmbedder,
    Resolved,
    choose,
)
from pipeline.options import EmbeddingOptions, UsageError, parse_options
from pipeline.plan import calibration_uris

K = 10
MIN_RECALL = 0.95  # of the 10 nearest neighbours: int8 is offered only because it holds this
# int8 against float32, per image, on the runs' 49 photographs and copies. Measured there:
# raw cosine at least 0.99975, mean-centred at least 0.9964 (recall@10 0.980). Centring
# leaves only what tells the images apart, of which int8's error is a larger part, and it
# depends on the image set: 0.976 at worst on 313 camera images (docs/engine.md). The raw
# bound is 0.9996's on those images, rounded down; the centred one sits between the two
# sets' worst, so that a change in quantisation fails it and another CPU's kernels do not.
MIN_RAW_COSINE = 0.999
MIN_CENTRED_COSINE = 0.98


# --- The sample the launcher picks ---------------------------------------------------------


def reader_uris(path: Path) -> list[str]:
    """The URIs the pipeline's reader takes from a CSV, in row order, each once: its own
    ParseRowFn on every line after the header (ReadFromText gives lines without endings)."""
    layout = sniff_layout(str(path))
    parse = ParseRowFn(layout)
    lines = path.read_bytes().splitlines()[layout.skip_lines :]
    found = [
        out[0]
        for line in lines
        for out in parse.process(line)
        if not isinstance(out, pvalue.TaggedOutput)
    ]
    return list(dict.fromkeys(found))


def test_the_sample_is_the_first_rows_as_the_reader_takes_them(tmp_path):
    csv = tmp_path / "images.csv"
    csv.write_bytes(
        b"\xef\xbb\xbf\n"  # a byte-order mark, then a blank line before the header
        b"label,uri\n"
        b"cat, a.jpg \n"  # whitespace around the URI
        b"\n"
        b"dog,\n"  # no URI: a read failure, not a row
        b"bad,\xff\xfe.jpg\n"  # not UTF-8: a read failure
        b"cat,a.jpg\n"  # a repeat
        b"short\n"  # no second field
        b'"quoted, label",b.jpg\r\n'
        b",,\n"
        b"x,c.jpg\n"
        b"y,d.jpg\n"
    )
    assert first_uris(str(csv), 100) == ("a.jpg", "b.jpg", "c.jpg", "d.jpg")
    assert list(first_uris(str(csv), 100)) == reader_uris(csv)
    assert first_uris(str(csv), 3) == ("a.jpg", "b.jpg", "c.jpg")


def test_without_a_header_every_row_is_a_uri_and_a_gzipped_csv_reads_the_same(tmp_path):
    rows = [f"img-{i}.jpg" for i in range(30)]
    plain = write_csv(tmp_path / "plain.csv", rows, header=False)
    zipped = tmp_path / "plain.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    assert first_uris(str(plain), 8) == tuple(rows[:8])
    assert first_uris(str(zipped), 8) == tuple(rows[:8])
    assert list(first_uris(str(plain), 100)) == reader_uris(plain)


def test_for_a_glob_the_sample_is_its_first_matches_sorted(tmp_path):
    for name in ["b.jpg", "a.jpg", "a2.jpg", "z.png", "c.jpg"]:
        (tmp_path / name).write_bytes(b"")
    pattern = str(tmp_path / "*.jpg")
    assert first_uris(pattern, 2) == (str(tmp_path / "a.jpg"), str(tmp_path / "a2.jpg"))
    assert first_uris(pattern, 10) == tuple(
        str(tmp_path / name) for name in ["a.jpg", "a2.jpg", "b.jpg", "c.jpg"]
    )


def test_only_int8_reads_a_sample_and_its_digest_is_of_the_uris_in_order(tmp_path):
    csv = write_csv(tmp_path / "images.csv", [f"{i}.jpg" for i in range(150)])
    argv = ["--input", str(csv), "--output", str(tmp_path / "out")]
    assert calibration_uris(parse_options(argv).view_as(EmbeddingOptions)) == ()
    int8 = parse_options([*argv, "--precision", "int8"]).view_as(EmbeddingOptions)
    sample = calibration_uris(int8)
    assert sample == tuple(f"{i}.jpg" for i in range(CALIBRATION_IMAGES))
    lines = "".join(f"{i}.jpg\n" for i in range(CALIBRATION_IMAGES)).encode()
    assert sample_digest(sample) == hashlib.sha256(lines).hexdigest()
    assert sample_digest(sample) != sample_digest(sample[::-1])
    assert sample_digest(("a", "bc")) != sample_digest(("ab", "c"))


# --- The options ---------------------------------------------------------------------------


def test_int8_on_tensorflow_is_a_usage_error():
    with pytest.raises(UsageError, match="--precision int8 runs on OpenVINO"):
        parse_options(
            ["--input", "a.csv", "--output", "out", "--engine", "tensorflow",
             "--precision", "int8"]
        )  # fmt: skip


def test_auto_runs_int8_on_openvino_gpu_or_not_and_never_chooses_it():
    assert choose("auto", INT8, [L4]) == Resolved(OPENVINO, INT8)
    assert choose("openvino", INT8, []) == Resolved(OPENVINO, INT8)
    assert choose("auto", "auto", []).precision in (FLOAT32, BFLOAT16)


# --- Loading the sample on a worker --------------------------------------------------------


def test_calibration_skips_images_that_fail_and_fails_below_the_minimum(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.jpg")
    resize = spec_of("resnet50", {}).resize("squash")
    good = PHOTO_PATHS[:MIN_CALIBRATION_IMAGES]
    sample = CalibrationSample((str(broken), *good, missing), Decoding(resize))
    images = sample.load()
    assert images.shape == (len(good), 224, 224, 3) and images.dtype == np.uint8

    too_few = CalibrationSample((str(broken), *good[:-1], missing), Decoding(resize))
    with pytest.raises(EngineUnavailableError) as raised:
        too_few.load()
    message = str(raised.value)
    assert f"{MIN_CALIBRATION_IMAGES - 1} of the input's first {MIN_CALIBRATION_IMAGES + 1}" in (
        message
    )
    assert "broken.jpg" in message and "--precision float32" in message


# slow: imports NNCF and quantises a small model twice (statistics, bias correction).
@pytest.mark.slow
def test_two_quantisations_on_the_same_images_give_the_same_embeddings():
    images = photographs(spec_of("resnet50", {}))
    function = small_convolutional_function(224)
    first = OpenVinoEmbedder(function, INT8, images)
    second = OpenVinoEmbedder(function, INT8, images.copy())
    np.testing.assert_array_equal(first(images), second(images))
    reference = function(images)
    assert cosines(first(images), reference).min() >= MIN_RAW_COSINE
    # Quantised: not float32 under another name.
    assert not np.allclose(first(images), reference, rtol=1e-4, atol=1e-6)
    # Other images give other ranges, so another model.
    other = OpenVinoEmbedder(function, INT8, images[::-1][: len(images) // 2])
    assert not np.array_equal(other(images), first(images))


# --- Pipeline runs -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(copies, tmp_path_factory):  # noqa: F811
    """The similarity test's photographs and copies embedded by TensorFlow in float32, and
    twice in int8, in two processes (one --engine auto, one --engine openvino)."""
    flags = {
        "int8": ("--engine", "auto", "--precision", "int8"),
        "int8-again": ("--engine", "openvino", "--precision", "int8"),
    }
    return {
        "float32": float32_run(copies, tmp_path_factory),
        **{
            name: neighbour_run(copies, tmp_path_factory.mktemp(name), *flag)
            for name, flag in flags.items()
        },
    }


def aligned(first: dict, second: dict) -> tuple[np.ndarray, np.ndarray]:
    uris = sorted(first)
    assert sorted(second) == uris
    return np.stack([first[u] for u in uris]), np.stack([second[u] for u in uris])


@pytest.mark.pipeline_run
def test_int8_runs_find_the_float32_neighbours_and_stay_close(runs):
    (fp32, _), (int8, _) = runs["float32"], runs["int8"]
    expected, got = neighbour_sets(fp32), neighbour_sets(int8)
    assert set(got) == set(expected)
    recall = np.mean([len(got[uri] & expected[uri]) / K for uri in expected])
    assert recall >= MIN_RECALL, recall
    reference, quantised = aligned(parquet_embeddings(fp32), parquet_embeddings(int8))
    raw = cosines(quantised, reference)
    centred = cosines(quantised - quantised.mean(0), reference - reference.mean(0))
    assert raw.min() >= MIN_RAW_COSINE, raw.min()
    assert centred.min() >= MIN_CENTRED_COSINE, centred.min()
    assert not np.allclose(quantised, reference, rtol=1e-3)  # int8 really ran


@pytest.mark.pipeline_run
def test_two_int8_runs_in_two_processes_give_identical_embeddings(runs):
    first, second = runs["int8"][0], runs["int8-again"][0]
    np.testing.assert_array_equal(*aligned(parquet_embeddings(first), parquet_embeddings(second)))


@pytest.mark.pipeline_run
def test_an_int8_run_records_its_precision_and_calibration_sample(runs, copies):  # noqa: F811
    import pyarrow.parquet as pq

    digest = sample_digest(tuple(copies[:CALIBRATION_IMAGES]))
    for name in ("int8", "int8-again"):
        output, printed = runs[name]
        assert printed["precision"] == INT8 and printed["calibration"] == digest
        engines = {k: v for k, v in printed["metrics"].items() if k.startswith("engine_")}
        assert set(engines) == {"engine_openvino_int8"} and engines["engine_openvino_int8"] >= 1
        _, files = read_parquet(output)
        metadata = pq.read_schema(files[0]).metadata
        assert (metadata[b"precision"], metadata[b"calibration"]) == (b"int8", digest.encode())
    assert "calibration" not in runs["float32"][1]


@pytest.mark.pipeline_run
def test_skip_existing_adds_int8_only_to_int8_calibrated_on_the_same_sample(runs, copies):  # noqa: F811
    output = runs["int8"][0]
    # The same rows (fewer than CALIBRATION_IMAGES: any other row would change the sample),
    # then the same rows in another order.
    for listed, refused in ((copies, False), (copies[::-1], True)):
        csv = write_csv(output.parent / f"more-{refused}.csv", listed)
        argv = ["--input", str(csv), "--output", str(output), "--weights", "random",
                "--precision", "int8", "--skip_existing",
                # As the runs were made: an output whose rows say what to keep is added
                # to only by a run that decides again.
                "--duplicate_threshold", str(THRESHOLD)]  # fmt: skip
        opts = parse_options(argv).view_as(EmbeddingOptions)
        if refused:
            with pytest.raises(UsageError, match="another calibration sample"):
                check_earlier_outputs(opts, calibration_uris(opts))
        else:
            check_earlier_outputs(opts, calibration_uris(opts))

    result = run_cli(*argv)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "were quantised on another calibration sample" in line, result.stderr


@pytest.mark.pipeline_run
def test_a_run_whose_calibration_images_all_fail_stops_before_embedding(tmp_path):
    broken = []
    for i in range(CALIBRATION_IMAGES):
        path = tmp_path / "broken" / f"{i:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not an image")
        broken.append(str(path))
    csv = write_csv(tmp_path / "images.csv", [*broken, *PHOTO_PATHS])
    output = tmp_path / "out"
    result = run_cli(
        "--input", str(csv), "--output", str(output), "--weights", "random",
        "--precision", "int8",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert (
        f"--precision int8: 0 of the input's first {CALIBRATION_IMAGES} images loaded"
        in result.stderr
    )
    assert not list(output.glob("embeddings/*.parquet"))


@pytest.mark.pipeline_run
def test_an_image_query_of_an_int8_output_is_quantised_as_the_stored_rows_were(runs, copies):  # noqa: F811
    from test_search import json_results, run_search

    output = runs["int8"][0]
    photo = copies[0]
    found = json_results(run_search(str(output), "--image", photo, "--k", "3", "--json"))
    assert photo in {row["uri"] for row in found[:2]}  # itself, or its identical copy
    # 1 up to rounding: the query went through the same quantised model (a float32 query
    # is about 1e-4 from the stored int8 row).
    assert abs(found[0]["similarity"] - 1.0) < 1e-6, found[0]
