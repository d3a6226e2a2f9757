"""The PCA CombineFn against numpy's SVD on the same numbers, in and out of Beam."""

from __future__ import annotations

import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from support import local_pipeline

from pipeline.report.projection import Moments, PrincipalComponentsFn, principal_components

TOLERANCE = 1e-4


def numpy_pca(matrix: np.ndarray):
    centred = matrix - matrix.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / (len(matrix) - 1)
    return rows[:2], variance[:2], centred @ rows[:2].T, variance.sum()


def embeddings(count: int, dimensions: int = 256, offset: float = 0.0) -> np.ndarray:
    """Clustered, anisotropic data with distinct leading variances, like real embeddings."""
    generator = np.random.default_rng(7)
    scales = np.linspace(3.0, 0.1, dimensions)
    centres = generator.normal(size=(5, dimensions)) * 2
    matrix = centres[np.arange(count) % 5] + generator.normal(size=(count, dimensions)) * scales
    return (matrix + offset).astype(np.float32)


def assert_matches_numpy(projection, matrix: np.ndarray) -> None:
    components, variance, coordinates, total = numpy_pca(matrix.astype(np.float64))
    signs = np.sign(np.sum(projection.components * components, axis=1))
    assert np.abs(projection.components - components * signs[:, None]).max() < TOLERANCE
    assert projection.explained_variance == pytest.approx(variance, rel=TOLERANCE)
    assert projection.total_variance == pytest.approx(total, rel=TOLERANCE)
    ours = projection.apply(matrix)
    scale = np.abs(coordinates).max()
    assert np.abs(ours - coordinates * signs).max() / scale < TOLERANCE


def test_one_accumulator_equals_numpy():
    matrix = embeddings(1000)
    combine = PrincipalComponentsFn()
    accumulator = combine.create_accumulator()
    for row in matrix:
        accumulator = combine.add_input(accumulator, row)
    projection = combine.extract_output(accumulator)
    assert projection.count == 1000
    assert_matches_numpy(projection, matrix)


def test_merged_and_pickled_accumulators_equal_numpy():
    # As on a runner: partial accumulators per bundle, each pickled with rows still
    # pending, then merged.
    matrix = embeddings(1003)
    combine = PrincipalComponentsFn()
    parts = []
    for chunk in np.array_split(matrix, 7):
        accumulator = combine.create_accumulator()
        for row in chunk:
            combine.add_input(accumulator, row)
        parts.append(pickle.loads(pickle.dumps(accumulator)))
    parts.append(combine.create_accumulator())  # an empty bundle
    projection = combine.extract_output(combine.merge_accumulators(parts))
    assert projection.count == 1003
    assert_matches_numpy(projection, matrix)


def test_a_large_common_offset_does_not_cost_accuracy():
    # ReLU features share a large positive mean; sum and second moments must not lose the
    # variance to cancellation.
    matrix = embeddings(500, offset=1000.0)
    moments = Moments()
    for row in matrix:
        moments.add(row)
    assert_matches_numpy(principal_components(moments), matrix)


def test_in_a_beam_pipeline():
    matrix = embeddings(600, dimensions=64)

    def check(outputs):
        (projection,) = outputs
        assert_matches_numpy(projection, matrix)

    with local_pipeline() as p:
        result = p | beam.Create(list(matrix)) | beam.CombineGlobally(PrincipalComponentsFn())
        assert_that(result, check)


def test_edge_cases():
    assert principal_components(Moments()) is None
    single = Moments()
    single.add(np.arange(4.0))
    projection = principal_components(single)
    assert projection.apply(np.arange(4.0)[None, :]) == pytest.approx(np.zeros((1, 2)))
    # Identical embeddings (byte-identical copies, say): no variance, every point at the
    # centre, whichever way the axes point.
    same = Moments()
    for _ in range(5):
        same.add(np.full(64, 0.5))
    flat = principal_components(same)
    assert flat.explained_variance == pytest.approx([0.0, 0.0])
    assert flat.apply(np.full((1, 64), 0.5)) == pytest.approx(np.zeros((1, 2)))
    mixed = Moments()
    mixed.add(np.zeros(4))
    with pytest.raises(ValueError, match="embeddings of 3 values met embeddings of 4"):
        mixed.add(np.zeros(3))


def test_signs_are_deterministic():
    matrix = embeddings(300)
    first, second = Moments(), Moments()
    for row in matrix:
        first.add(row)
    for row in matrix[::-1]:
        second.add(row)
    a, b = principal_components(first), principal_components(second)
    assert np.allclose(a.components, b.components, atol=1e-8)
    largest = np.argmax(np.abs(a.components), axis=1)
    assert (a.components[[0, 1], largest] > 0).all()
