"""keep and drop_reason: on vectors with planted groups, chains and matches in another
collection, the kept set equals numpy's reading of the rule in docs/similarity.md, and the
record files are rewritten with every other column as it was."""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import cosine_matrix, embeddings_table, local_pipeline
from test_compare import brute_force
from test_similarity import planted_duplicates, reference_groups, uri

from pipeline.outputs import FORMATS, RowColumns, RunTarget
from pipeline.similarity import KeepDecisions
from pipeline.similarity.compare import CompareSettings, CompareWith
from pipeline.similarity.find import FindSimilar, SimilaritySettings

DIMENSIONS = 96
RUN = "20260101T000000-aaaaaa"  # the run that stored both collections
KEEP_RUN = "20260101T000001-bbbbbb"  # the run that decides
THRESHOLD = 0.95
# float32 search against float64 numpy (as in test_compare): a pair closer than this to
# the threshold may fall on either side of it.
TOLERANCE = 2e-5


def store_shards(
    folder: Path, uris: list[str], vectors: np.ndarray, sizes, run_id: str, curated=False
):
    """The rows as the pipeline's Parquet shards in two files under folder (its stage
    when the folder is a run's), with keep and drop_reason not yet decided when curated;
    returns their paths."""
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, rows in enumerate(np.array_split(np.arange(len(uris)), 2)):
        path = folder / "embeddings" / f"embeddings-{run_id}-{shard:05d}-of-00002.parquet"
        chosen = [uris[i] for i in rows]
        columns = RowColumns(curated=curated)
        table = embeddings_table(
            chosen, vectors[rows].astype(np.float32), sizes[rows], run_id, "m", columns
        )
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def theirs_from(ours: np.ndarray, planted: dict, generator) -> tuple[np.ndarray, list[int]]:
    """The other collection: near-copies of some of our images (a group's representative,
    a group's member, a chain's middle, a loner) and unrelated vectors. Returns it and
    the indices of ours that were copied."""
    copied = [
        min(planted["tight 5 at 7"]),
        max(planted["tight 8 at 12"]),
        sorted(planted["chain, a largest"])[1],
        600,
        900,
    ]
    copies = ours[copied] + generator.normal(scale=0.01, size=(len(copied), DIMENSIONS))
    unrelated = generator.normal(size=(40, DIMENSIONS))
    return np.concatenate([copies, unrelated]), copied


def reference(ours, sizes, theirs, their_uris) -> dict[str, str]:
    """numpy's decisions: the reason for every image not kept."""
    similarities = cosine_matrix(ours)
    dropped = {}
    for members in reference_groups(similarities, sizes, THRESHOLD):
        for member in members[1:]:
            dropped[uri(member)] = f"duplicate_of:{uri(members[0])}"
    our_uris = [uri(i) for i in range(len(ours))]
    nearest = brute_force(
        dict(zip(our_uris, ours, strict=True)), dict(zip(their_uris, theirs, strict=True)), 1
    )
    for name, ((match, similarity),) in nearest.items():
        if similarity >= THRESHOLD:
            dropped[name] = f"matches:{match}"
    return dropped


def near_threshold(ours, theirs) -> list:
    """Pairs whose similarity lies within TOLERANCE of the threshold."""
    ours_only = cosine_matrix(ours)
    union = cosine_matrix(np.concatenate([ours, theirs]))[: len(ours), len(ours) :]
    return [
        (kind, *pair)
        for kind, matrix in (("ours", ours_only), ("across", union))
        for pair in zip(*np.nonzero(np.abs(matrix - THRESHOLD) < TOLERANCE), strict=True)
    ]


def read_decisions(paths: list[str]) -> dict[str, tuple[bool, str | None]]:
    rows = pq.read_table(paths).select(["uri", "keep", "drop_reason"]).to_pylist()
    return {row["uri"]: (row["keep"], row["drop_reason"]) for row in rows}


# slow: FindSimilar with every near-duplicate round and CompareWith in one pipeline (6-9 s).
@pytest.mark.slow
def test_the_kept_set_is_numpys_and_nothing_is_dropped_beyond_the_threshold(tmp_path):
    ours, sizes, planted = planted_duplicates(seed=2)
    theirs, copied = theirs_from(ours, planted, np.random.default_rng(4))
    assert near_threshold(ours, theirs) == [], "a planted pair sits on the threshold"
    output, other = tmp_path / "ours", tmp_path / "theirs"
    target = RunTarget(str(output), KEEP_RUN)
    our_uris = [uri(i) for i in range(len(ours))]
    their_uris = [f"gs://theirs/{index:05d}.jpg" for index in range(len(theirs))]
    # This run's shards as the store leaves them, undecided: keep and drop_reason empty.
    stage = output / "_runs" / KEEP_RUN
    originals = store_shards(Path(target.undecided), our_uris, ours, sizes, KEEP_RUN, curated=True)
    assert pq.read_table(originals[0]).column("keep").null_count > 0
    before = {path: pq.read_table(path) for path in originals}
    store_shards(other, their_uris, theirs, np.full((len(theirs), 2), 100), RUN)
    described = tmp_path / "described.json"
    with local_pipeline() as p:
        files = p | beam.Create(originals)
        found = {"files": files} | FindSimilar(
            target, SimilaritySettings(0, THRESHOLD, 150, 3, seed=0)
        )
        compared = {"files": files} | CompareWith(
            target,
            CompareSettings(str(other), "parquet", (RUN,), THRESHOLD, 1, 150, 3, seed=0),
        )
        made = {
            "files": files,
            "duplicate_of": found["duplicate_of"],
            "matched": compared["matched"],
        } | KeepDecisions(target)
        _ = made["description"] | beam.Map(lambda d: described.write_text(json.dumps(d)))

    decided = sorted(glob.glob(str(stage / "embeddings" / "*.parquet")))
    assert [Path(path).name for path in decided] == [Path(path).name for path in originals]
    decisions = read_decisions(decided)
    expected = reference(ours, sizes, theirs, their_uris)
    found_dropped = {name: why for name, (keep, why) in decisions.items() if not keep}
    assert found_dropped == expected
    assert all(keep and why is None for keep, why in decisions.values() if keep)
    # The planted cases: a copied representative and member, and a chain's middle, are
    # dropped for their match, which comes before their group.
    for index in copied:
        assert decisions[uri(index)][1].startswith("matches:"), uri(index)
    a, b, c = sorted(planted["chain, b largest"])
    assert decisions[uri(a)] == decisions[uri(c)] == (False, f"duplicate_of:{uri(b)}")

    # Nothing is dropped further than the threshold from its reason's image.
    centred = cosine_matrix(ours)
    union = cosine_matrix(np.concatenate([ours, theirs]))
    for name, why in found_dropped.items():
        kind, other_uri = why.split(":", 1)
        row = our_uris.index(name)
        if kind == "duplicate_of":
            assert centred[row, our_uris.index(other_uri)] >= THRESHOLD - TOLERANCE
        else:
            assert union[row, len(ours) + their_uris.index(other_uri)] >= THRESHOLD - TOLERANCE

    # Every other column as it was, row for row; the metadata too; the undecided files
    # (which the searches read) untouched.
    for (path, table), written in zip(before.items(), decided, strict=True):
        assert pq.read_table(path).equals(table)
        rewritten = pq.read_table(written)
        assert rewritten.schema.metadata == table.schema.metadata
        assert rewritten.drop(["keep", "drop_reason"]).equals(table.drop(["keep", "drop_reason"]))
    by_reason = {"duplicate_of": 0, "matches": 0}
    for why in expected.values():
        by_reason[why.split(":", 1)[0]] += 1
    assert json.loads(described.read_text()) == {
        "kept": len(ours) - len(expected),
        "dropped": len(expected),
        "dropped_by_reason": by_reason,
        "files_rewritten": 2,
    }
    # A copy matches its image and, in a tight group, the group's other members too.
    assert by_reason["duplicate_of"] > 10 and by_reason["matches"] > len(copied)


def earlier_shard(path: Path) -> pa.Table:
    """A shard an earlier run wrote without keep and drop_reason."""
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    table = embeddings_table(["a", "b", "c"], vectors, np.full((3, 2), 10), RUN, "m")
    assert "keep" not in table.schema.names
    pq.write_table(table, path)
    return table


def test_a_parquet_shard_without_the_columns_gets_them_before_model(tmp_path):
    source = tmp_path / "earlier.parquet"
    table = earlier_shard(source)
    destination = tmp_path / "stage" / "earlier.parquet"
    destination.parent.mkdir()
    FORMATS["parquet"].write_decisions(str(source), str(destination), {"b": "matches:x"})
    rewritten = pq.read_table(destination)
    names = table.schema.names
    position = names.index("model")
    assert rewritten.schema.names == [*names[:position], "keep", "drop_reason", *names[position:]]
    assert rewritten.column("keep").to_pylist() == [True, False, True]
    assert rewritten.column("drop_reason").to_pylist() == [None, "matches:x", None]
    assert rewritten.drop(["keep", "drop_reason"]).equals(table)
    assert pq.read_table(source).equals(table), "the published shard was changed"
    assert sorted(p.name for p in destination.parent.iterdir()) == ["earlier.parquet"]


@pytest.mark.parametrize("decided_before", [False, True])
def test_an_npy_index_gets_its_decisions_in_place(tmp_path, decided_before):
    index = tmp_path / "embeddings-index-RUN-00000-of-00001.csv"
    header = ["uri", "file", "width", "height", "datapoint_id", "note"]
    rows = [
        ["a,1", "r/a.npy", "1", "2", "a,1", "x"],
        ["b", "r/b.npy", "3", "4", "b", "line\nbreak"],
    ]
    if decided_before:
        header += ["keep", "drop_reason"]
        rows = [[*row, "true", ""] for row in rows]
    with open(index, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    FORMATS["npy"].write_decisions(str(index), str(index), {"a,1": "duplicate_of:b"})
    with open(index, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [row["keep"] for row in written] == ["false", "true"]
    assert [row["drop_reason"] for row in written] == ["duplicate_of:b", ""]
    assert [row["note"] for row in written] == ["x", "line\nbreak"]
    assert list(written[0])[-2:] == ["keep", "drop_reason"]
    assert glob.glob(str(tmp_path / ".*")) == [], "a partial file was left"


def test_decided_rows_read_back_whole_from_either_format(tmp_path):
    """What the Vector Search files are written from once decided: every column of a
    row, labels and scores included, and its drop reason; an index name that leaves
    embeddings/ is refused."""
    from pipeline.common import ImageKey, Labels, UnsafeNameError
    from pipeline.outputs.sinks import parquet_row, parquet_schema

    columns = RowColumns(kept=("sku",), labelled=True, scores=("aesthetic",), curated=True)
    labels = Labels("cat", 0.75, ("cat", "dog"), (0.75, 0.25))
    key = ImageKey("gs://b/a.jpg", 4, 3, columns=("SKU-1",), labels=labels, scores=(6.5,))
    vector = np.array([0.1, -2.0, 3.5], np.float32)
    row = parquet_row((key, vector), columns, "m", RUN)
    parquet = tmp_path / "shard.parquet"
    pq.write_table(pa.Table.from_pylist([row], parquet_schema((3,), {}, columns)), parquet)
    FORMATS["parquet"].write_decisions(str(parquet), str(parquet), {key.uri: "matches:x"})

    (tmp_path / "embeddings" / RUN).mkdir(parents=True)
    np.save(tmp_path / "embeddings" / RUN / "a.npy", vector)
    index = tmp_path / "embeddings-index.csv"
    header = ["uri", "file", "width", "height", "datapoint_id", *columns.names]
    line = [key.uri, f"{RUN}/a.npy", "4", "3", key.uri, "cat", "0.75", '["cat","dog"]',
            "[0.75,0.25]", "6.5", "SKU-1", "false", "matches:x"]  # fmt: skip
    with open(index, "w", newline="") as handle:
        csv.writer(handle).writerows([header, line])

    from pipeline.outputs.rows import ReadNpyRowFn, index_rows, parquet_columns, parquet_stored_row

    # As ReadAllFromParquet gives each row: a dict of the columns asked for.
    [parquet_dict] = pq.read_table(parquet, columns=parquet_columns(columns)).to_pylist()
    [line_read] = index_rows(str(index), columns)
    [from_npy] = ReadNpyRowFn(str(tmp_path), columns).process(line_read)
    for stored in (parquet_stored_row(parquet_dict, columns), from_npy):
        assert stored.key == key and stored.key.columns == key.columns
        assert (stored.key.labels, stored.key.scores) == (labels, key.scores)
        assert np.array_equal(stored.embedding, vector) and stored.drop_reason == "matches:x"

    line[1] = "../outside.npy"
    with open(index, "w", newline="") as handle:
        csv.writer(handle).writerows([header, line])
    with pytest.raises(UnsafeNameError):
        [line_read] = index_rows(str(index), columns)
        list(ReadNpyRowFn(str(tmp_path), columns).process(line_read))
