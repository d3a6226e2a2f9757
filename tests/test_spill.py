"""Spill files: data only, exact, refused when planted, and removed run by run."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.outputs.naming import run_temp_folder, spill_prefix
from pipeline.similarity.spill import (
    SPILL_SUFFIX,
    RemoveSpillFilesFn,
    SpillFn,
    read_range,
    read_values,
)

RUN, OTHER_RUN = "20260101T000000-aaaaaa", "20260101T000500-bbbbbb"


class Planted:
    """Unpickling it creates the marker file: what a crafted pickle can make a reader do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def spilled(prefix: str, pairs: list, spill_bytes: int = 1 << 20) -> list:
    """What SpillFn yields for the pairs, as one bundle: (key, file range) pairs."""
    spill = SpillFn(prefix, spill_bytes)
    spill.start_bundle()
    ranges = [item for pair in pairs for item in spill.process(pair)]
    return ranges + [windowed.value for windowed in spill.finish_bundle()]


def grouped(ranges: list) -> dict:
    by_key: dict = {}
    for key, file_range in ranges:
        by_key.setdefault(key, []).append(file_range)
    return dict(read_values(item) for item in by_key.items())


def assert_identical(got, expected) -> None:
    """Equal types all the way down, and every number's bytes equal."""
    assert type(got) is type(expected), (got, expected)
    if isinstance(expected, np.ndarray | np.generic):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected)
        for got_item, expected_item in zip(got, expected, strict=True):
            assert_identical(got_item, expected_item)
    elif isinstance(expected, float):
        assert got.hex() == expected.hex()
    else:
        assert got == expected


def plant(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_a_pickle_planted_at_a_spill_path_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "unpickled"
    path = f"{spill_prefix(run_temp_folder(None, str(tmp_path), RUN))}-cells-0{SPILL_SUFFIX}"
    data = pickle.dumps([Planted(marker)], protocol=pickle.HIGHEST_PROTOCOL)
    plant(path, data)
    with pytest.raises(ValueError, match=re.escape(path)):
        read_range((path, 0, len(data)))
    assert not marker.exists()


def test_a_pickle_over_a_written_spill_file_is_refused_at_each_range(tmp_path):
    marker = tmp_path / "unpickled"
    ranges = spilled(spill_prefix(run_temp_folder(None, str(tmp_path), RUN)), [(0, "a"), (1, "b")])
    path = ranges[0][1][0]
    data = pickle.dumps(Planted(marker), protocol=pickle.HIGHEST_PROTOCOL)
    plant(path, data * 64)  # the pickle where each range of the file was
    for _, file_range in ranges:
        with pytest.raises(ValueError, match="is not a record batch"):
            read_range(file_range)
    assert not marker.exists()


def test_an_arrow_batch_of_another_layout_or_an_object_dtype_is_refused(tmp_path):
    prefix = spill_prefix(run_temp_folder(None, str(tmp_path), RUN))
    other = pa.record_batch([pa.array([1, 2])], names=["value"]).serialize().to_pybytes()
    plant(f"{prefix}-other{SPILL_SUFFIX}", other)
    with pytest.raises(ValueError, match="is not a record batch"):
        read_range((f"{prefix}-other{SPILL_SUFFIX}", 0, len(other)))
    # Written by SpillFn, then the value's dtype rewritten to numpy's object dtype.
    ((_, (path, offset, length)),) = spilled(prefix, [(0, np.arange(4, dtype=np.int64))])
    data = Path(path).read_bytes()
    assert data.count(b'"<i8"') == 1
    plant(path, data.replace(b'"<i8"', b'"|O8"'))
    with pytest.raises(ValueError, match=r"unknown entry 'array' of dtype '\|O8'"):
        read_range((path, offset, length))


def test_values_that_cannot_be_held_as_data_are_refused_when_spilled(tmp_path):
    prefix = spill_prefix(run_temp_folder(None, str(tmp_path), RUN))
    with pytest.raises(TypeError, match="not dtype object"):
        spilled(prefix, [(0, np.array([Planted(tmp_path)], dtype=object))])
    with pytest.raises(TypeError, match="not dict"):
        spilled(prefix, [(0, {"a": 1})])


def similarity_values(seed: int) -> dict:
    """Values of the kinds FindSimilar groups, per key: cells' (uris, rows), merge
    candidates (uri, names, similarities) and group members (uri, pixels, row)."""
    generator = np.random.default_rng(seed)
    uris = [f"gs://bücher/ファイル {i} 🐈.jpg" for i in range(40)] + ["gs://b/\ud800lone.jpg"]
    rows = generator.normal(size=(len(uris), 2048)).astype(np.float32)
    similarities = generator.uniform(-1, 1, size=(len(uris), 5)).astype(np.float32)
    return {
        0: [(uris[:30], rows[:30]), (uris[30:], rows[30:]), ([], rows[:0])],
        1: [[(uri, uris[:5], similarities[i].tolist()) for i, uri in enumerate(uris)]],
        "group": [(uri, 640 * 480 + i, rows[i]) for i, uri in enumerate(uris)],
        (7, "mixed"): [
            None,
            True,
            2**70,
            -0.0,
            float(np.float32(1 / 3)),
            np.float32(0.1),
            np.int64(-5),
            np.arange(6, dtype=">i2").reshape(2, 3),
            rows[:, :3].T,  # not contiguous
            ((), [[]], ("",)),
        ],
    }


def identical(got, expected) -> bool:
    try:
        assert_identical(got, expected)
    except AssertionError:
        return False
    return True


def test_values_come_back_bit_exact_in_order(tmp_path):
    values = similarity_values(seed=5)
    pairs = [(key, value) for key, key_values in values.items() for value in key_values]
    ranges = spilled(spill_prefix(run_temp_folder(None, str(tmp_path), RUN)), pairs)
    assert len({path for _, (path, _, _) in ranges}) == 1
    got = grouped(ranges)
    assert set(got) == set(values)
    for key, key_values in values.items():
        assert_identical(got[key], key_values)
    assert all(rows.flags.writeable for _, rows in got[0])


def test_values_spread_over_several_files_come_back_bit_exact(tmp_path):
    values = similarity_values(seed=6)
    pairs = [(key, value) for key, key_values in values.items() for value in key_values]
    ranges = spilled(
        spill_prefix(run_temp_folder(None, str(tmp_path), RUN)), pairs, spill_bytes=20_000
    )
    assert len({path for _, (path, _, _) in ranges}) > 3
    got = grouped(ranges)
    assert set(got) == set(values)
    for key, key_values in values.items():  # files are read in name order, not written order
        assert len(got[key]) == len(key_values)
        unmatched = list(got[key])
        for value in key_values:
            match = next(i for i, item in enumerate(unmatched) if identical(item, value))
            unmatched.pop(match)


def test_a_spill_file_is_one_arrow_stream_of_a_batch_per_key(tmp_path):
    prefix = spill_prefix(run_temp_folder(None, str(tmp_path), RUN))
    ranges = spilled(prefix, [(key, (f"uri-{key}", np.float32(key))) for key in range(3)])
    ((path,),) = {(path,) for _, (path, _, _) in ranges}
    assert path.startswith(str(tmp_path / "_runs" / RUN / "similarity" / "spill-"))
    with pa.ipc.open_stream(path) as stream:
        batches = list(stream)
    assert len(batches) == 3
    assert sorted(batch.num_rows for batch in batches) == [1, 1, 1]


def test_clean_up_removes_this_runs_spill_files_only(tmp_path):
    output = str(tmp_path)
    ours = spilled(f"{spill_prefix(run_temp_folder(None, output, RUN))}-cells", [(0, "a")])
    ours += spilled(f"{spill_prefix(run_temp_folder(None, output, RUN))}-merge", [(0, "b")])
    theirs = spilled(f"{spill_prefix(run_temp_folder(None, output, OTHER_RUN))}-cells", [(0, "c")])
    earlier_layout = tmp_path / f"_similarity-{OTHER_RUN}-cells-0.spill"
    earlier_layout.write_bytes(b"an earlier version's working file")

    (removed,) = RemoveSpillFilesFn(spill_prefix(run_temp_folder(None, output, RUN))).process(
        None, [], []
    )

    assert removed == 2
    assert not [path for _, (path, _, _) in ours if os.path.exists(path)]
    assert grouped(theirs) == {0: ["c"]}  # the concurrent run still reads its values
    assert earlier_layout.exists()
