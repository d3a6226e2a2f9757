"""gs:// end to end against a GCS JSON API emulator, incremental runs, URIs we refuse."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cloud import SERVICE_ACCOUNT, FaultyProxy, MetadataServer, emulator_client, storage_emulator
from publish_faults import STEPS, Stopped, stop_publish_at
from support import (
    PHOTO_PATHS,
    REPO,
    centred_cosines,
    dead_letter,
    keras_reference,
    make_bad_inputs,
    npy_embeddings,
    parquet_embeddings,
    read_neighbors,
    read_parquet,
    relative_error,
    run_cli,
    summary,
    write_csv,
)
from test_publish_step import ONLY_RUN, OTHER, RUN, passing_summary

from pipeline.outputs import RunTarget, roll_forward
from pipeline.outputs.naming import run_temp_folder, spill_prefix
from pipeline.run.lease import take_lease
from pipeline.run.publish import PublishFn, PublishPlan
from pipeline.similarity.spill import SPILL_SUFFIX

pytestmark = pytest.mark.pipeline_run

BUCKET = "photo-bucket"
SEED = 4


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """An emulated bucket holding the photographs, some bad inputs and a CSV of them."""
    metadata = MetadataServer()
    with storage_emulator(BUCKET) as emulator:
        client = emulator_client(emulator)
        bucket = client.bucket(BUCKET)
        photos = {}
        for path in PHOTO_PATHS:
            name = f"photos/{os.path.basename(path)}"
            bucket.blob(name).upload_from_filename(path)
            photos[f"gs://{BUCKET}/{name}"] = path
        bad = {}
        local_bad = make_bad_inputs(tmp_path_factory.mktemp("bad"))
        for name, (path, error_type) in local_bad.items():
            if os.path.exists(path):
                bucket.blob(f"bad/{name}").upload_from_filename(path)
            bad[f"gs://{BUCKET}/bad/{name}"] = error_type
        # Loopback only: were the address check broken, nothing off this machine is asked.
        bad["https://127.0.0.1:9/computeMetadata/v1/token.jpg"] = "BlockedAddressError"
        csv_path = write_csv(tmp_path_factory.mktemp("csv") / "images.csv", [*photos, *bad])
        bucket.blob("lists/images.csv").upload_from_filename(str(csv_path))
        env = {
            "STORAGE_EMULATOR_HOST": emulator,
            **metadata.environment,
        }
        yield {"client": client, "bucket": bucket, "photos": photos, "bad": bad, "env": env}
    metadata.close()


def download(gcs, prefix: str, local: Path) -> Path:
    """Mirrors gs://BUCKET/prefix/ into local, to read it with the local readers."""
    for blob in gcs["client"].list_blobs(BUCKET, prefix=prefix + "/"):
        target = local / blob.name[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(target)
    return local


def run_on_gcs(gcs, *args: str):
    # float32: parity with Keras in full precision (auto may compute bfloat16).
    args = (*args, "--weights", "random", "--seed", str(SEED), "--precision", "float32")
    return run_cli(*args, env=gcs["env"])


@pytest.fixture(scope="module")
def reference(gcs):
    import keras

    keras.utils.set_random_seed(SEED)
    model = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )
    return keras_reference(model, PHOTO_PATHS)


@pytest.mark.parametrize("output_format", ["parquet", "npy"])
def test_gs_input_images_and_output_end_to_end(gcs, reference, output_format, tmp_path):
    prefix = f"out-{output_format}"
    result = run_on_gcs(
        gcs,
        "--input", f"gs://{BUCKET}/lists/images.csv",
        "--output", f"gs://{BUCKET}/{prefix}",
        "--output_format", output_format,
        "--jpeg_draft", "false",
        "--max_failure_fraction", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    local = download(gcs, prefix, tmp_path / prefix)
    read = parquet_embeddings if output_format == "parquet" else npy_embeddings
    embeddings = read(local)
    assert set(embeddings) == set(gcs["photos"])
    for uri, path in gcs["photos"].items():
        assert relative_error(embeddings[uri], reference[path]) <= 1e-4, uri
    records = {r["uri"]: r for r in dead_letter(local)}
    assert {uri: r["error_type"] for uri, r in records.items()} == gcs["bad"]
    got = summary(local)
    assert got["reconciled"] and got["embedded"] == len(gcs["photos"])
    assert got["failed"] == len(gcs["bad"])


def test_neighbours_and_groups_on_gcs(gcs, tmp_path):
    # Five images a cell: three cells, each image in all three, so the search goes
    # through the spill files, their ranged reads and the merge, and is still exact.
    result = run_on_gcs(
        gcs,
        "--input", f"gs://{BUCKET}/lists/images.csv",
        "--output", f"gs://{BUCKET}/out-similar",
        "--neighbors", "4",
        "--duplicate_threshold", "0.5",
        "--similarity_cell_size", "5",
        "--max_failure_fraction", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    names = [blob.name for blob in gcs["client"].list_blobs(BUCKET, prefix="out-similar/")]
    assert not [name for name in names if "/similarity/spill-" in name], "spill files were left"
    local = download(gcs, "out-similar", tmp_path / "similar")
    uris, similarities = centred_cosines(parquet_embeddings(local))
    np.fill_diagonal(similarities, -np.inf)
    neighbors = read_neighbors(local)
    assert sorted(neighbors) == uris
    for uri, (names, found) in neighbors.items():
        i = uris.index(uri)
        expected = [uris[j] for j in np.argsort(-similarities[i], kind="stable")[:4]]
        assert names == expected
        np.testing.assert_allclose(
            found, [similarities[i, uris.index(n)] for n in expected], atol=1e-5
        )
    described = summary(local)["similarity"]
    assert described["method"] == "ivf" and described["cells"] == 3
    bands = described["neighbors"].pop("bands")
    assert described["neighbors"] == {"k": 4, "images": len(uris)}
    listed = {tuple(sorted((uri, name))) for uri, (names, _) in neighbors.items() for name in names}
    assert sum(band["pairs"] for band in bands) == len(listed)
    grouped = (local / next(p.name for p in local.glob("duplicates-*.csv"))).read_text()
    assert described["duplicates"]["images"] == len(grouped.splitlines()) - 1


SPILL_CHECK = """
import hashlib, pickle, sys
import numpy as np
from pipeline.similarity.spill import SpillFn, read_range, read_values
prefix, planted, planted_length = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = np.random.default_rng(1).normal(size=(50, 2048)).astype(np.float32)
uris = [f"gs://bücher/{i} 🐈.jpg" for i in range(50)]
spill = SpillFn(prefix, spill_bytes=100_000)  # several objects, one ranged read each
spill.start_bundle()
ranges = [r for i in range(50) for _, r in spill.process((0, (uris[i], i, rows[i])))]
ranges += [windowed.value[1] for windowed in spill.finish_bundle()]
_, values = read_values((0, ranges))
values.sort(key=lambda value: value[1])
print(len({path for path, _, _ in ranges}), [u for u, _, _ in values] == uris)
print(hashlib.sha256(np.stack([row for _, _, row in values]).tobytes()).hexdigest())
try:
    read_range((planted, 0, planted_length))
except ValueError as error:
    print(error)
"""


class Planted:
    """Unpickling it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_spill_objects_round_trip_exactly_and_refuse_a_planted_pickle(gcs, tmp_path):
    prefix = spill_prefix(
        run_temp_folder(None, f"gs://{BUCKET}/out-spill", "20260101T000000-aaaaaa")
    )
    planted = f"{prefix}-cells-0{SPILL_SUFFIX}"
    marker = tmp_path / "unpickled"
    data = pickle.dumps(Planted(marker))
    gcs["bucket"].blob(planted.removeprefix(f"gs://{BUCKET}/")).upload_from_string(data)
    result = subprocess.run(
        [sys.executable, "-c", SPILL_CHECK, prefix, planted, str(len(data))],
        cwd=REPO, env={**os.environ, **gcs["env"]}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # the last line: the planted pickle's refusal
    files, digest, refusal = lines
    count, uris_equal = files.split()
    assert int(count) > 3 and uris_equal == "True"
    rows = np.random.default_rng(1).normal(size=(50, 2048)).astype(np.float32)
    assert digest == hashlib.sha256(rows.tobytes()).hexdigest()
    assert refusal.startswith(f"{planted} (bytes 0 to {len(data)}) is not a record batch")
    assert not marker.exists()


def test_gs_glob_input(gcs, tmp_path):
    result = run_on_gcs(
        gcs, "--input", f"gs://{BUCKET}/photos/**", "--output", f"gs://{BUCKET}/out-glob"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    local = download(gcs, "out-glob", tmp_path / "glob")
    assert set(parquet_embeddings(local)) == set(gcs["photos"])


def test_a_gs_parquet_manifest_embeds_as_a_csv_of_its_urls(gcs, tmp_path):
    """A glob of gs:// Parquet manifests with a kept caption: the caption as the manifest
    holds it, and the very embeddings a CSV of the same URIs and captions gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    urls = sorted(gcs["photos"])
    captions = [f"photo {i}, {os.path.basename(url)}" for i, url in enumerate(urls)]
    ids = pa.array(range(len(urls)), pa.int64())
    manifest = tmp_path / "part-0.parquet"
    pq.write_table(pa.table({"url": urls, "caption": captions, "id": ids}), manifest)
    gcs["bucket"].blob("laion/part-0.parquet").upload_from_filename(str(manifest))
    listed = tmp_path / "captioned.csv"
    with open(listed, "w", newline="") as handle:
        csv.writer(handle).writerows([("uri", "caption"), *zip(urls, captions, strict=True)])
    gcs["bucket"].blob("lists/captioned.csv").upload_from_filename(str(listed))
    inputs = {"manifest": "laion/*.parquet", "csv": "lists/captioned.csv"}
    embedded, kept = {}, {}
    for name, path in inputs.items():
        result = run_cli(
            "--input", f"gs://{BUCKET}/{path}",
            "--output", f"gs://{BUCKET}/out-{name}",
            "--keep_columns", "caption",
            "--weights", "random", "--seed", "5",
            env=gcs["env"],
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        local = download(gcs, f"out-{name}", tmp_path / name)
        embedded[name] = parquet_embeddings(local)
        table, _ = read_parquet(local)
        uris, kept_captions = table.column("uri").to_pylist(), table.column("caption").to_pylist()
        kept[name] = dict(zip(uris, kept_captions, strict=True))
    assert kept["manifest"] == kept["csv"] == dict(zip(urls, captions, strict=True))
    assert set(embedded["manifest"]) == set(embedded["csv"]) == set(urls)
    for url in urls:
        np.testing.assert_array_equal(embedded["manifest"][url], embedded["csv"][url], url)


@pytest.mark.parametrize("output_format", ["parquet", "npy"])
def test_skip_existing_embeds_only_new_rows(output_format, tmp_path):
    first, second = PHOTO_PATHS[:10], PHOTO_PATHS[10:]
    output = tmp_path / "out"
    common = ("--output", str(output), "--output_format", output_format, "--weights", "random",
              "--skip_existing")  # fmt: skip
    result = run_cli("--input", str(write_csv(tmp_path / "10.csv", first)), *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(second) == 3  # the sample set has 13 photographs
    extra = [f"{tmp_path}/../{os.path.basename(tmp_path)}/copy-{i}.png" for i in range(2)]
    for path in extra:
        Path(path).write_bytes(Path(PHOTO_PATHS[0]).read_bytes())
    grown = write_csv(tmp_path / "15.csv", [*first, *second, *extra])
    result = run_cli("--input", str(grown), *common, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = summary(output)
    assert printed["skipped_existing"] == 10 and printed["embedded"] == 5
    assert printed["reconciled"]
    metrics = result.stdout[result.stdout.index('"metrics"') :]
    assert '"images_loaded": 5' in metrics and '"skipped_existing": 10' in metrics
    if output_format == "parquet":
        table_uris = list(parquet_embeddings(output))
        table, _ = read_parquet(output)
        all_uris = table.column("uri").to_pylist()
    else:
        from support import npy_index

        all_uris = [row["uri"] for row in npy_index(output)]
        table_uris = list(npy_embeddings(output))
    assert len(all_uris) == len(set(all_uris)) == 15
    assert set(table_uris) == {*first, *second, *extra}


def test_a_run_through_injected_storage_faults_loses_nothing(gcs, tmp_path):
    proxy = FaultyProxy(gcs["env"]["STORAGE_EMULATOR_HOST"], every=20)
    try:
        result = run_cli(
            "--input", f"gs://{BUCKET}/lists/images.csv",
            "--output", f"gs://{BUCKET}/out-faults",
            "--weights", "random",
            "--max_failure_fraction", "0.5",
            env={**gcs["env"], "STORAGE_EMULATOR_HOST": proxy.url},
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    faults = {kind: n for kind, n in proxy.injected.items() if kind != "forwarded"}
    print(f"storage faults injected and survived: {faults}")
    assert all(faults.values()), faults
    local = download(gcs, "out-faults", tmp_path / "faults")
    table, _ = read_parquet(local)
    uris = table.column("uri").to_pylist()
    assert sorted(uris) == sorted(gcs["photos"]), "every photograph embedded exactly once"
    records = {r["uri"]: r["error_type"] for r in dead_letter(local)}
    assert records == gcs["bad"], "faults must not turn into dead-letter entries"
    assert summary(local)["reconciled"]


def test_the_metadata_stand_in_serves_a_credential_refreshed_again():
    """A refreshed credential asks by its email; threads sharing one in a worker do that."""
    code = (
        "from google.auth import compute_engine; "
        "from google.auth.transport.requests import Request; "
        "c = compute_engine.Credentials(); c.refresh(Request()); c.refresh(Request()); "
        "print(c.service_account_email, c.token)"
    )
    metadata = MetadataServer()
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, **metadata.environment}, timeout=60)  # fmt: skip
    finally:
        metadata.close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [SERVICE_ACCOUNT, "offline"]
    accounts = "/computeMetadata/v1/instance/service-accounts"
    assert f"{accounts}/default/" in metadata.paths
    assert f"{accounts}/{SERVICE_ACCOUNT}/" in metadata.paths


@pytest.mark.parametrize("step", STEPS)
def test_a_publish_on_gcs_stopped_at_any_step_is_finished_by_a_reader(gcs, step, monkeypatch):
    """The journal through Beam's GCS file system: renames as copies and deletes, object
    prefixes as folders; the output then holds exactly the stopped run's objects."""
    for name, value in gcs["env"].items():
        monkeypatch.setenv(name, value)
    prefix = f"journal-{STEPS.index(step)}"
    output = f"gs://{BUCKET}/{prefix}"
    bucket = gcs["bucket"]
    for name in (f"embeddings/embeddings-{OTHER}-00000-of-00001.parquet",
                 f"failures-{OTHER}-00000-of-00001.jsonl", "map.png"):  # fmt: skip
        bucket.blob(f"{prefix}/{name}").upload_from_string(OTHER)
    earlier = json.dumps({"run_id": OTHER, "embedding_runs": [OTHER]})
    bucket.blob(f"{prefix}/summary.json").upload_from_string(earlier)
    staged = []
    for name in sorted(ONLY_RUN - {"summary.json"}):
        bucket.blob(f"{prefix}/_runs/{RUN}/{name}").upload_from_string(RUN)
        staged.append(f"{output}/_runs/{RUN}/{name}")
    take_lease(output, RUN, time.time(), runner="FnApiRunner")
    plan = PublishPlan(RunTarget(output, RUN))
    with monkeypatch.context() as faults:
        stop_publish_at(step, faults, undeletable=f"embeddings-{OTHER}-00000-of-00001.parquet")
        with contextlib.suppress(Stopped):
            summary = {**passing_summary(Path(prefix)), "outputs": {"failures": f"{output}/f*"}}
            list(PublishFn(plan, fail_job=False).process(None, summary, staged))
    assert bucket.blob(f"{prefix}/_publish.json").exists()

    assert roll_forward(output) == RUN
    names = {
        blob.name[len(prefix) + 1 :]
        for blob in gcs["client"].list_blobs(BUCKET, prefix=f"{prefix}/")
        if not blob.name.endswith("_lease.json")
    }
    assert names == ONLY_RUN
    published = json.loads(bucket.blob(f"{prefix}/summary.json").download_as_bytes())
    assert (published["run_id"], published["embedding_runs"]) == (RUN, [RUN])
