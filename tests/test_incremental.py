"""--skip_existing never mixes embeddings made otherwise, and a run leaves only the files
its output lists."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
from support import (
    PHOTO_PATHS,
    npy_embeddings,
    npy_index,
    run_cli,
    snapshot,
    summary,
    write_csv,
)

pytestmark = pytest.mark.pipeline_run

EARLIER = PHOTO_PATHS[:4]


def run(csv_path: Path, output: Path, *flags: str):
    return run_cli("--input", str(csv_path), "--output", str(output), "--weights", "random",
                   *flags)  # fmt: skip


@pytest.fixture(scope="module", params=["parquet", "npy"])
def earlier_output(request, tmp_path_factory):
    """An output of 4 photographs: ResNet50, random weights (seed 0), avg, squash."""
    root = tmp_path_factory.mktemp(f"earlier_{request.param}")
    result = run(write_csv(root / "four.csv", EARLIER), root / "out", "--output_format",
                 request.param)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return request.param, root / "out", write_csv(root / "all.csv", PHOTO_PATHS)


@pytest.mark.parametrize(
    "flags, differs",
    [
        (("--pooling", "max"), "pooling avg there, max here"),
        (("--seed", "7"), "weights random (seed 0"),
        (("--model", "efficientnet_b0"), "model resnet50 there, efficientnet_b0 here"),
        (("--resize", "center_crop"), "resize squash there, center_crop here"),
    ],
)
def test_skip_existing_refuses_embeddings_made_otherwise(earlier_output, flags, differs):
    output_format, output, all_csv = earlier_output
    before = snapshot(output)
    result = run(all_csv, output, "--output_format", output_format, "--skip_existing", *flags)
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: --skip_existing:"), line
    assert differs in line
    assert snapshot(output) == before, "a refused run wrote something"


def test_skip_existing_refuses_another_output_format(earlier_output):
    """One output holds embeddings made one way: a second format is not added beside."""
    output_format, output, all_csv = earlier_output
    other = "npy" if output_format == "parquet" else "parquet"
    before = snapshot(output)
    result = run(all_csv, output, "--output_format", other, "--skip_existing")
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert f"are --output_format {output_format}, this run's would be {other}" in line, line
    assert snapshot(output) == before, "a refused run wrote something"


def test_skip_existing_with_the_same_settings_adds_the_rest(earlier_output, tmp_path):
    output_format, output, all_csv = earlier_output
    copy = tmp_path / "out"
    for path in output.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(output)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    result = run(all_csv, copy, "--output_format", output_format, "--skip_existing")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = summary(copy)
    assert (counts["skipped_existing"], counts["embedded"]) == (len(EARLIER), 9)
    if output_format == "npy":
        assert_npy_files_are_the_listed_ones(copy)
        assert len(npy_index(copy)) == len(PHOTO_PATHS)


def npy_files(output: Path) -> set[str]:
    found = glob.glob(str(output / "embeddings" / "**" / "*"), recursive=True)
    return {str(Path(path).relative_to(output / "embeddings")) for path in found}


def assert_npy_files_are_the_listed_ones(output: Path) -> None:
    """embeddings/ holds exactly the files the index lists, and one metadata.json per run
    that they came from."""
    listed = {row["file"] for row in npy_index(output)}
    runs = {name.split("/")[0] for name in listed}
    expected = listed | runs | {f"{run}/metadata.json" for run in runs}
    assert npy_files(output) == expected
    for run in runs:
        metadata = json.loads((output / "embeddings" / run / "metadata.json").read_text())
        assert (metadata["run_id"], metadata["pooling"], metadata["embedding_shape"]) == (
            run,
            "avg",
            [2048],
        )


def test_an_npy_rerun_of_fewer_images_leaves_only_the_files_its_index_lists(tmp_path):
    output = tmp_path / "out"
    for count in (len(PHOTO_PATHS), 5):
        csv_path = write_csv(tmp_path / f"{count}.csv", PHOTO_PATHS[:count])
        result = run(csv_path, output, "--output_format", "npy")
        assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(npy_embeddings(output)) == sorted(PHOTO_PATHS[:5])
    assert_npy_files_are_the_listed_ones(output)
    assert len(npy_files(output)) == 5 + 2  # the files, their run's folder and metadata


def test_a_run_removes_what_crashed_runs_left_and_keeps_failed_runs_records(tmp_path):
    output = tmp_path / "out"
    crashed = output / "_runs" / "20200101T000000-aaaaaa"
    failed = output / "_runs" / "20200101T000001-bbbbbb"
    planted = {
        crashed / "embeddings" / "beam-temp-embeddings-x" / "part": b"partial",
        crashed / "similarity" / "spill-0.arrow": b"spill",
        output / "embeddings" / "20200101T000000-aaaaaa" / "a.npy": b"npy",
        failed / "summary.json": b'{"status": "failed"}',
        failed / "failures-20200101T000001-bbbbbb-00000-of-00001.jsonl": b"{}\n",
        # What earlier versions left where readers look.
        output / "embeddings" / "beam-temp-embeddings-20200101T000002-cccccc-0" / "p": b"x",
        output / "_similarity-20200101T000002-cccccc-cells-0.spill": b"x",
    }
    for path, data in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    result = run(write_csv(tmp_path / "two.csv", PHOTO_PATHS[:2]), output)
    assert result.returncode == 0, result.stderr[-3000:]
    left = {path for path in planted if path.exists()}
    assert left == {failed / "summary.json", *failed.glob("failures-*.jsonl")}
    assert not crashed.exists()
    assert not (output / "embeddings" / "20200101T000000-aaaaaa").exists()
