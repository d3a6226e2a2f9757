"""The engines on real photographs: OpenVINO float32 against TensorFlow on the same Keras
function for each model family, bfloat16 against float32 (embeddings, neighbours and
near-duplicate groups of pipeline runs), mixed float16 through grappler's CPU emulation of
its GPU rewrite, auto's choice (on this CPU, and for given GPUs) and its fallbacks, and
what a run records of them."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from support import (
    PHOTO_PATHS,
    centred_cosines,
    parquet_embeddings,
    read_parquet,
    relative_error,
    run_cli,
    shared_folder,
    write_csv,
)
from test_hub_models import FAMILIES, tiny_preset
from test_similarity_images import family as photo_copies  # noqa: F401 (a fixture)
from test_similarity_images import read_groups

from pipeline.inputs.images import decode
from pipeline.models.backbones import ModelSpec
from pipeline.models.engines import (
    BFLOAT16,
    FLOAT16,
    FLOAT32,
    MIXED_FLOAT16_CPU_EMULATION,
    OPENVINO,
    TENSORFLOW,
    CpuInfo,
    EngineUnavailableError,
    Resolved,
    TensorFlowEmbedder,
    bfloat16_is_faster,
    choose,
    cpu_has_bf16,
    cpu_info,
    gpu_details,
    make_embedder,
    parse_cpuinfo,
)
from pipeline.models.handler import EmbeddingFunction, build_embedding_model
from pipeline.options import UsageError, parse_options

needs_bf16 = pytest.mark.skipif(
    not cpu_has_bf16(),
    reason="this CPU does not compute bfloat16 (OpenVINO's OPTIMIZATION_CAPABILITIES lacks "
    "BF16: no AVX512_BF16 or AMX), so bfloat16 is not offered here",
)
MAX_RELATIVE_ERROR = 1e-4  # OpenVINO float32 against TensorFlow, per image
MIN_COSINE = 0.999  # bfloat16 against float32, per image, raw and mean-centred
MIN_RECALL = 0.95  # of the 10 nearest neighbours
K = 10
THRESHOLD = 0.9999  # --duplicate_threshold of the two runs
# How far bfloat16 moves a near-duplicate pair's similarity (the mean-centred cosine the
# groups are made from) from float32's. Measured on a Xeon with AMX (AMX_BF16 and
# AVX512_BF16), OpenVINO 2026.4.1, over the 66 pairs of two_runs' 49 images whose float32
# similarity is 0.99 or more and not 1: 7.3e-5 at most. Doubled for the other CPUs this
# suite may meet with BF16 (AVX512_BF16 without AMX, such as an AMD EPYC): their kernels
# round the same values to bfloat16 but add the products in another order, so their pairs
# move as far, not by the same amounts.
BF16_SIMILARITY_ERROR = 1.5e-4


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {kind: tiny_preset(kind, root / kind) for kind in FAMILIES}


def spec_of(name: str, presets) -> ModelSpec:
    """keras.applications models on seeded random weights; keras-hub ones from a tiny preset."""
    if name in FAMILIES:
        return ModelSpec.of(FAMILIES[name], str(presets[name]), "avg", 0)
    return ModelSpec.of(name, "random", "avg", 0)


def photographs(spec: ModelSpec) -> np.ndarray:
    """The sample photographs as the load step gives them to this model."""
    resize = spec.resize("squash")
    return np.stack(
        [decode(Path(p).read_bytes(), resize, jpeg_draft=False).pixels for p in PHOTO_PATHS]
    )


def embeddings(spec: ModelSpec, engine: str, precision: str) -> tuple[np.ndarray, Resolved]:
    function = EmbeddingFunction(build_embedding_model(spec))
    embedder, resolved = make_embedder(function, spec.model, engine, precision)
    return embedder(photographs(spec)), resolved


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    first, second = first.astype(np.float64), second.astype(np.float64)
    dot = (first * second).sum(axis=1)
    return dot / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


# slow: each case converts and compiles a model with OpenVINO (5-12 s).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "clip", "siglip", "dinov2"])
def test_openvino_float32_equals_tensorflow_for_each_family(name, presets):
    spec = spec_of(name, presets)
    expected, on_tf = embeddings(spec, TENSORFLOW, FLOAT32)
    got, on_ov = embeddings(spec, OPENVINO, FLOAT32)
    assert (on_tf, on_ov) == (Resolved(TENSORFLOW, FLOAT32), Resolved(OPENVINO, FLOAT32))
    assert got.shape == expected.shape and len(got) == len(PHOTO_PATHS)
    errors = [relative_error(a, e) for a, e in zip(got, expected, strict=True)]
    assert max(errors) <= MAX_RELATIVE_ERROR, errors


@needs_bf16
# slow: two OpenVINO compilations of the model per case.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "clip"])
def test_bfloat16_embeddings_point_where_float32_ones_do(name, presets):
    spec = spec_of(name, presets)
    reference, _ = embeddings(spec, TENSORFLOW, FLOAT32)
    got, resolved = embeddings(spec, OPENVINO, BFLOAT16)
    assert resolved == Resolved(OPENVINO, BFLOAT16)
    raw = cosines(got, reference)
    centred = cosines(got - got.mean(axis=0), reference - reference.mean(axis=0))
    assert raw.min() >= MIN_COSINE, raw
    assert centred.min() >= MIN_COSINE, centred
    # Not float32 under another name: bfloat16 keeps 8 bits of mantissa.
    assert max(relative_error(a, e) for a, e in zip(got, reference, strict=True)) > 1e-4


def test_auto_runs_openvino_on_a_cpu_in_bfloat16_only_where_bfloat16_is_the_faster():
    if gpu_details():
        pytest.skip("a GPU is visible: auto runs TensorFlow here")
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    words = set(text.split())
    if words:
        # OpenVINO's own capability agrees with what the kernel reports.
        assert cpu_has_bf16() == bool(words & {"avx512_bf16", "amx_bf16"})
        assert {"amx_bf16", "avx512_bf16", "avx2"} & words <= cpu_info().flags
        assert cpu_info().vendor in words | {""}  # Arm's kernels name no vendor_id
    faster = "amx_bf16" in words or "AuthenticAMD" in words
    expected = BFLOAT16 if cpu_has_bf16() and faster else FLOAT32
    assert choose("auto", "auto") == Resolved(OPENVINO, expected)
    assert choose("auto", "float32") == Resolved(OPENVINO, FLOAT32)
    assert choose("tensorflow", "auto") == Resolved(TENSORFLOW, FLOAT32)


def test_cpuinfo_is_read_from_the_first_processors_own_lines():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\n"
        "vmx flags\t: vnmi ept\nflags\t\t: fpu avx512_bf16 avx512f\nbugs\t\t: spectre\n\n"
        "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: fpu amx_bf16\n"
    )
    assert parse_cpuinfo(text) == CpuInfo(
        "AuthenticAMD", frozenset({"fpu", "avx512_bf16", "avx512f"})
    )
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n"
    assert parse_cpuinfo(arm) == CpuInfo("", frozenset())


@pytest.mark.parametrize(
    ("has_bf16", "vendor", "flags", "faster"),
    [
        (True, "GenuineIntel", {"avx512_bf16", "amx_bf16", "amx_tile"}, True),  # Xeon, AMX
        (True, "AuthenticAMD", {"avx512_bf16", "avx512f"}, True),  # EPYC Genoa: 1.9x
        (True, "GenuineIntel", {"avx512_bf16", "avx512f"}, False),  # AMX hidden: 0.58x
        (False, "GenuineIntel", {"avx2", "fma"}, False),  # no bfloat16 at all
        (False, "AuthenticAMD", {"avx2", "fma"}, False),
    ],
)
def test_bfloat16_is_the_faster_with_amx_or_on_amd(has_bf16, vendor, flags, faster):
    assert bfloat16_is_faster(has_bf16, CpuInfo(vendor, frozenset(flags))) is faster


L4 = {"device_name": "NVIDIA L4", "compute_capability": (8, 9)}
T4 = {"device_name": "Tesla T4", "compute_capability": (7, 5)}
P100 = {"device_name": "Tesla P100-PCIE-16GB", "compute_capability": (6, 0)}


@pytest.mark.parametrize(
    ("gpus", "engine", "precision", "expected"),
    [
        ([L4], "auto", "auto", Resolved(TENSORFLOW, FLOAT16)),
        ([T4], "auto", "auto", Resolved(TENSORFLOW, FLOAT16)),
        ([T4], "tensorflow", "auto", Resolved(TENSORFLOW, FLOAT16)),
        ([P100], "auto", "auto", Resolved(TENSORFLOW, FLOAT32)),  # no tensor cores
        ([L4, P100], "auto", "auto", Resolved(TENSORFLOW, FLOAT32)),
        (
            [{"device_name": "no capability reported"}],
            "auto",
            "auto",
            Resolved(TENSORFLOW, FLOAT32),
        ),
        ([L4], "tensorflow", "float32", Resolved(TENSORFLOW, FLOAT32)),
        ([L4], "auto", "float32", Resolved(TENSORFLOW, FLOAT32)),
        ([], "tensorflow", "auto", Resolved(TENSORFLOW, FLOAT32)),
    ],
)
def test_auto_precision_is_float16_only_on_gpus_with_tensor_cores(
    gpus, engine, precision, expected
):
    assert choose(engine, precision, gpus) == expected


def test_float16_is_counted_under_its_own_name():
    assert Resolved(TENSORFLOW, FLOAT16).counter == "engine_tensorflow_float16"


def test_without_a_gpu_auto_runs_openvino_whatever_the_precision():
    assert choose("auto", "float32", []) == Resolved(OPENVINO, FLOAT32)
    assert choose("auto", "bfloat16", [L4]).engine == OPENVINO


def small_convolutional_function(size: int, offset: float = 0.0, scale: float = 1.0):
    """Convolutions, a pooling and a dense layer on uint8 images: a model whose graph
    grappler's CPU emulation of the float16 rewrite handles (it crashes TensorFlow 2.21 on
    ResNet50, EfficientNet and CLIP's graphs: docs/engine.md). offset and scale make the
    dense layer's outputs pass float16's largest value (65504)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255, offset)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(64, kernel_initializer=keras.initializers.Constant(scale))
    return EmbeddingFunction(keras.Model(inputs, dense(x)))


def test_mixed_float16_points_where_float32_does_and_float32_stays_float32():
    spec = spec_of("resnet50", {})
    images = photographs(spec)
    function = small_convolutional_function(spec.input_size)
    reference = function(images)
    got = TensorFlowEmbedder(function, FLOAT16, MIXED_FLOAT16_CPU_EMULATION)(images)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert cosines(got, reference).min() >= MIN_COSINE
    # The rewrite acted (values rounded to float16 between operations)...
    assert max(relative_error(a, e) for a, e in zip(got, reference, strict=True)) > 1e-4
    # ...on its own calls only: the same function, called as float32, is float32 again.
    np.testing.assert_array_equal(TensorFlowEmbedder(function)(images), reference)


def test_auto_on_a_tensor_core_gpu_embeds_in_float16_and_falls_back_where_it_overflows():
    images = photographs(spec_of("resnet50", {}))[:3]
    on_gpu = {"gpus": [L4], "float16_rewrite": MIXED_FLOAT16_CPU_EMULATION}
    function = small_convolutional_function(224)
    embedder, resolved = make_embedder(function, "small", "auto", "auto", **on_gpu)
    assert resolved == Resolved(TENSORFLOW, FLOAT16) and embedder.precision == FLOAT16
    assert 0 < np.abs(embedder(images) - function(images)).max() < 1e-2

    overflowing = small_convolutional_function(224, offset=300.0, scale=1000.0)
    embedder, resolved = make_embedder(overflowing, "overflowing", "auto", "auto", **on_gpu)
    assert (resolved.engine, resolved.precision) == (TENSORFLOW, FLOAT32)
    assert "not finite" in resolved.fallback
    assert np.all(np.isfinite(embedder(images)))
    np.testing.assert_array_equal(embedder(images), overflowing(images))


def pixel_means_function() -> EmbeddingFunction:
    """A Keras model OpenVINO cannot convert (numpy inside: a PyFunc op): each image's mean
    red, green and blue."""
    import keras
    import tensorflow as tf

    class PixelMeans(keras.layers.Layer):
        def call(self, images):
            def means(pixels):
                return pixels.astype(np.float32).mean(axis=(1, 2))

            return tf.reshape(tf.numpy_function(means, [images], tf.float32), (-1, 3))

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    return EmbeddingFunction(keras.Model(inputs, PixelMeans()(inputs)))


def test_openvino_asked_for_a_model_it_cannot_convert_is_an_error_naming_both():
    with pytest.raises(EngineUnavailableError) as raised:
        make_embedder(pixel_means_function(), "pixel-means", OPENVINO, FLOAT32)
    message = str(raised.value)
    assert "--engine openvino" in message and "pixel-means" in message
    assert "PyFunc" in message  # the operation OpenVINO has no rule for


def test_auto_falls_back_to_tensorflow_and_says_why():
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    embedder, resolved = make_embedder(pixel_means_function(), "pixel-means", "auto", "auto")
    assert (resolved.engine, resolved.precision) == (TENSORFLOW, FLOAT32)
    assert "PyFunc" in resolved.fallback
    np.testing.assert_allclose(embedder(images), images.mean(axis=(1, 2)), rtol=1e-6)


def test_bfloat16_on_tensorflow_is_a_usage_error():
    with pytest.raises(UsageError, match="--precision bfloat16 runs on OpenVINO"):
        parse_options(
            ["--input", "a.csv", "--output", "out", "--engine", "tensorflow",
             "--precision", "bfloat16"]
        )  # fmt: skip


def printed_summary(stdout: str) -> dict:
    return json.JSONDecoder().raw_decode(stdout[stdout.index("{") :])[0]


def neighbour_run(uris: list[str], root: Path, *engine_flags: str) -> tuple[Path, dict]:
    output = root / "out"
    result = run_cli(
        "--input", str(write_csv(root / "images.csv", uris)),
        "--output", str(output),
        "--weights", "random",
        "--neighbors", str(K),
        "--duplicate_threshold", "0.9999",
        "--json",
        *engine_flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return output, printed_summary(result.stdout)


@pytest.fixture(scope="module")
def copies(photo_copies) -> list[str]:  # noqa: F811
    """The similarity test's photographs and their altered and identical copies."""
    return [uri for members in photo_copies.values() for uri in members.values()]


def float32_run(copies: list[str], tmp_path_factory) -> tuple[Path, dict]:
    """The copies embedded in float32 by TensorFlow: the run the other precisions are
    measured against, made once per session for this file and test_int8.py."""

    def make(root: Path) -> None:
        _, printed = neighbour_run(copies, root, "--engine", "tensorflow", "--precision", FLOAT32)
        (root / "printed.json").write_text(json.dumps(printed))

    root = shared_folder(tmp_path_factory, "float32-run", make)
    return root / "out", json.loads((root / "printed.json").read_text())


@pytest.fixture(scope="module")
def two_runs(copies, tmp_path_factory):
    """The copies embedded in float32 by TensorFlow and in bfloat16 by OpenVINO."""
    bfloat16 = ("--engine", "openvino", "--precision", BFLOAT16)
    return {
        FLOAT32: float32_run(copies, tmp_path_factory),
        BFLOAT16: neighbour_run(copies, tmp_path_factory.mktemp(BFLOAT16), *bfloat16),
    }


def neighbour_sets(output: Path) -> dict[str, set[str]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted(output.glob("neighbors-*.parquet"))).to_pylist()
    return {row["uri"]: set(row["neighbors"]) for row in rows}


def group_sets(output: Path) -> set[frozenset[str]]:
    members: dict[int, set[str]] = {}
    for number, uri, _ in read_groups(output):
        members.setdefault(number, set()).add(uri)
    return {frozenset(group) for group in members.values()}


def groups_in_order(output: Path) -> dict[int, list[str]]:
    """group number -> its URIs, the representative first, as the file lists them."""
    members: dict[int, list[str]] = {}
    for number, uri, _ in read_groups(output):
        members.setdefault(number, []).append(uri)
    return members


def grouped_pairs(output: Path) -> set[frozenset[str]]:
    """Every pair of images that share a group."""
    return {
        frozenset(pair)
        for members in groups_in_order(output).values()
        for pair in itertools.combinations(members, 2)
    }


@needs_bf16
@pytest.mark.pipeline_run
def test_bfloat16_runs_find_the_float32_neighbours_and_duplicate_groups(two_runs):
    (fp32, _), (bf16, _) = two_runs[FLOAT32], two_runs[BFLOAT16]
    expected, got = neighbour_sets(fp32), neighbour_sets(bf16)
    assert set(got) == set(expected)
    recall = np.mean([len(got[uri] & expected[uri]) / K for uri in expected])
    assert recall >= MIN_RECALL, recall
    assert group_sets(fp32) != set()
    # The groups are compared only where rounding cannot decide them. A pair whose float32
    # similarity lies within BF16_SIMILARITY_ERROR of T may fall on either side of T in
    # bfloat16, and which side depends on the CPU (on a Xeon with AMX, chelsea's JPEG-30
    # copy, 4e-7 under T in float32, inside the 1e-6 the engine allows, fell out of its
    # group; on an AMD EPYC it stayed). First, that the error holds here:
    uris, reference = centred_cosines(parquet_embeddings(fp32))
    _, rounded = centred_cosines(parquet_embeddings(bf16))
    near = np.triu(reference >= 0.99, k=1)
    moved = np.abs(rounded - reference)[near].max()
    assert moved <= BF16_SIMILARITY_ERROR, f"bfloat16 moved a pair near T by {moved:.2e}"
    # Then the groups as sets of pairs, on the pairs whose grouping no rounding within that
    # error can change: byte-identical copies (equal embeddings in each run, similarity 1
    # in either precision, so always one group), and pairs further apart than two members of
    # one group can be (each is within arccos(T) of the representative, so a pair under
    # cos(2 arccos T) = 2T^2 - 1 never shares a group). The pairs in between are left out:
    # whether they share a group rests on their similarity, or each one's to its
    # representative, within the error of T (here every pair a group could hold, but for
    # the identical copies: bfloat16's error is most of 1 - T = 1e-4).
    index = {uri: i for i, uri in enumerate(uris)}
    fp32_embeddings, bf16_embeddings = parquet_embeddings(fp32), parquet_embeddings(bf16)
    lowest = THRESHOLD - 1e-6  # the engine's own allowance for float32 rounding
    apart = 2 * lowest**2 - 1 - BF16_SIMILARITY_ERROR

    def decided(pair: frozenset[str]) -> bool:
        a, b = pair
        identical = all(
            np.array_equal(run[a], run[b]) for run in (fp32_embeddings, bf16_embeddings)
        )
        return identical or reference[index[a], index[b]] < apart

    compared = {pair for pair in map(frozenset, itertools.combinations(uris, 2)) if decided(pair)}
    expected_pairs, got_pairs = grouped_pairs(fp32) & compared, grouped_pairs(bf16) & compared
    assert expected_pairs, "no pair that rounding cannot move was grouped: nothing compared"
    assert got_pairs == expected_pairs
    # And every bfloat16 group keeps its members within T of what it keeps, by float32's
    # measure less the error.
    for number, members in groups_in_order(bf16).items():
        kept = index[members[0]]
        for uri in members[1:]:
            assert reference[kept, index[uri]] >= lowest - BF16_SIMILARITY_ERROR, (number, uri)


@needs_bf16
@pytest.mark.pipeline_run
def test_a_run_records_the_engine_asked_for_and_counts_the_one_that_ran(two_runs):
    for precision, engine in ((FLOAT32, TENSORFLOW), (BFLOAT16, OPENVINO)):
        output, printed = two_runs[precision]
        assert (printed["engine"], printed["precision"]) == (engine, precision)
        # What ran, as data the extract step carries with each embedding.
        assert printed["engines_ran"] == [{"engine": engine, "precision": precision}]
        # One model per worker process: at least one process, none on another engine.
        engines = {k: v for k, v in printed["metrics"].items() if k.startswith("engine_")}
        assert (
            set(engines) == {f"engine_{engine}_{precision}"}
            and engines[f"engine_{engine}_{precision}"] >= 1
        )
        _, files = read_parquet(output)
        import pyarrow.parquet as pq

        metadata = pq.read_schema(files[0]).metadata
        assert (metadata[b"engine"], metadata[b"precision"]) == (
            engine.encode(),
            precision.encode(),
        )
        assert len(parquet_embeddings(output)) == printed["embedded"]


@needs_bf16
@pytest.mark.pipeline_run
def test_skip_existing_refuses_to_add_float32_embeddings_to_bfloat16_ones(two_runs, copies):
    output, _ = two_runs[BFLOAT16]
    result = run_cli(
        "--input", str(write_csv(output.parent / "more.csv", copies)),
        "--output", str(output),
        "--weights", "random",
        "--skip_existing",
        "--precision", "float32",
    )  # fmt: skip
    assert result.returncode != 0
    assert "precision bfloat16 there, float32 here" in result.stderr
