"""--bigquery_table and --vector_search_output on gs://: a load job from the Parquet shards
in the GCS emulator into the BigQuery stand-in (held to BigQuery's discovery document),
read back row by row; Vector Search files written through the emulator."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bigquery_standin import BigQueryStandIn
from cloud import PROJECT, MetadataServer, emulator_client, storage_emulator
from support import PHOTO_PATHS, embeddings_table, run_cli, summary_on_gcs
from vector_format import check_vector_search_folder

from pipeline.outputs.naming import EMBEDDINGS, datapoint_id, run_folder, shard_prefix

pytestmark = pytest.mark.pipeline_run

BUCKET = "catalogue-bucket"
DATASET = "images"
SEED = 5
# Awkward values a catalogue holds: commas, quotes, unicode, padding, nothing.
LABELS = ["a, b", 'say "cheese"', "Zürich — 東京 🚀", "  padded  ", "", "plain"]
# How the synthetic shards' embeddings were made, as the table records it.
MADE = {
    "model": "resnet50",
    "weights": "random (seed 5, NOT pretrained: embeddings carry no meaning)",
    "pooling": "avg",
    "resize": "squash",
    "embedding_shape": [2048],
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The photographs and a catalogue CSV in an emulated bucket; a BigQuery stand-in
    with one dataset; the environment that points the pipeline at both."""
    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            standin = BigQueryStandIn(PROJECT, [f"{PROJECT}.{DATASET}"], emulator)
            try:
                client = emulator_client(emulator)
                bucket = client.bucket(BUCKET)
                catalogue = {}
                for index, path in enumerate(PHOTO_PATHS):
                    name = f"photos/{os.path.basename(path)}"
                    bucket.blob(name).upload_from_filename(path)
                    uri = f"gs://{BUCKET}/{name}"
                    catalogue[uri] = {
                        "label": LABELS[index % len(LABELS)],
                        "sku": f"SKU-{index:03d}",
                    }
                env = {
                    "STORAGE_EMULATOR_HOST": emulator,
                    **metadata.environment,
                    "BIGQUERY_EMULATOR_HOST": standin.address,
                }
                yield {
                    "bucket": bucket,
                    "client": client,
                    "catalogue": catalogue,
                    "standin": standin,
                    "env": env,
                }
            finally:
                standin.close()
    finally:
        metadata.close()


def upload_csv(cloud, name: str, uris: list[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["sku", "uri", "label"])
    for uri in uris:
        row = cloud["catalogue"][uri]
        writer.writerow([row["sku"], uri, row["label"]])
    cloud["bucket"].blob(name).upload_from_string(text.getvalue(), content_type="text/csv")
    return f"gs://{BUCKET}/{name}"


def run(cloud, csv_uri: str, output: str, table: str, *extra: str):
    return run_cli(
        "--input", csv_uri, "--output", f"gs://{BUCKET}/{output}",
        "--weights", "random", "--seed", str(SEED), "--keep_columns", "label,sku",
        "--bigquery_table", f"{PROJECT}.{DATASET}.{table}", *extra,
        env=cloud["env"],
    )  # fmt: skip


def parquet_rows(cloud, output: str) -> dict[str, dict]:
    """Every row of the output's Parquet folder, by URI, read from the emulator."""
    tables = []
    for blob in cloud["client"].list_blobs(BUCKET, prefix=f"{output}/embeddings/"):
        tables.append(pq.read_table(io.BytesIO(blob.download_as_bytes())))
    rows = pa.concat_tables(tables).to_pylist()
    return {row["uri"]: row for row in rows}


def table_rows(cloud, table: str) -> tuple[list[dict], list]:
    """The table's rows as the google-cloud-bigquery client reads them (tabledata.list)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": cloud["standin"].address},
    )
    resource = client.get_table(f"{PROJECT}.{DATASET}.{table}")
    rows = [dict(row.items()) for row in client.list_rows(resource, page_size=5)]
    return rows, resource.schema


def table_description(cloud, table: str) -> dict:
    return json.loads(cloud["standin"].tables[f"{PROJECT}.{DATASET}.{table}"]["description"])


def assert_table_equals_output(cloud, table: str, output: str, curated: bool = False) -> list[dict]:
    """The table's rows and columns are the output's; curated: with keep and drop_reason."""
    rows, schema = table_rows(cloud, table)
    expected = parquet_rows(cloud, output)
    assert sorted(row["uri"] for row in rows) == sorted(expected)
    decisions = ("keep", "drop_reason") if curated else ()
    for row in rows:
        stored = expected[row["uri"]]
        # float32 in Parquet, FLOAT64 in BigQuery: the same numbers, exactly.
        assert row["embedding"] == [float(np.float32(v)) for v in stored["embedding"]]
        columns = ("width", "height", "datapoint_id", "label", "sku", *decisions, "model", "run_id")
        for column in columns:
            assert row[column] == stored[column], column
        if row["uri"] in cloud["catalogue"]:
            assert row["label"] == cloud["catalogue"][row["uri"]]["label"]
    kinds = {field.name: (field.field_type, field.mode) for field in schema}
    assert kinds == {
        "uri": ("STRING", "NULLABLE"),
        "embedding": ("FLOAT", "REPEATED"),
        "width": ("INTEGER", "NULLABLE"),
        "height": ("INTEGER", "NULLABLE"),
        "datapoint_id": ("STRING", "NULLABLE"),
        "label": ("STRING", "NULLABLE"),
        "sku": ("STRING", "NULLABLE"),
        **({"keep": ("BOOLEAN", "NULLABLE"), "drop_reason": ("STRING", "NULLABLE")}
           if curated else {}),
        "model": ("STRING", "NULLABLE"),
        "run_id": ("STRING", "NULLABLE"),
    }  # fmt: skip
    assert cloud["standin"].invalid == []
    return rows


def test_bigquery_table_and_vector_search_files_equal_the_parquet_output(cloud):
    uris = list(cloud["catalogue"])
    csv_uri = upload_csv(cloud, "lists/all.csv", uris)
    result = run(
        cloud, csv_uri, "full", "photos", "--bigquery_vector_index",
        "--vector_search_output", f"gs://{BUCKET}/vector-search/photos",
        "--vector_search_crowding_column", "sku",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = assert_table_equals_output(cloud, "photos", "full")
    assert len(rows) == len(uris)
    described = summary_on_gcs(cloud["client"], BUCKET, "full")["bigquery"]
    assert described["rows_loaded"] == described["table_rows"] == len(uris)
    assert described["write"] == "replace"
    assert described["attempts"] == [
        {"job_id": described["job_id"], "state": "DONE", "error": None}
    ]
    # The table records how its embeddings were made, as the summary does.
    summary = summary_on_gcs(cloud["client"], BUCKET, "full")
    assert table_description(cloud, "photos") == {
        "model": summary["model"],
        "weights": summary["weights"],
        "pooling": summary["pooling"],
        "resize": summary["resize"],
        "embedding_shape": summary["embedding_shape"],
    }
    # 13 rows of 2,048 floats are far below the 10 MB BigQuery needs for an index.
    assert described["vector_index"]["created"] is False
    assert "10 MB" in described["vector_index"]["reason"]
    assert cloud["standin"].vector_indexes == {}

    files = {
        blob.name: blob.download_as_bytes()
        for blob in cloud["client"].list_blobs(BUCKET, prefix="vector-search/photos/")
    }
    parquet = parquet_rows(cloud, "full")
    datapoints = check_vector_search_folder(files, "vector-search/photos/", dimensions=2048)
    assert len(datapoints) == len(uris)
    for uri, row in parquet.items():
        point = datapoints[datapoint_id(uri)]
        assert np.array_equal(np.array(point["embedding"], np.float32), row["embedding"])
        assert point["restricts"] == [
            {"namespace": "label", "allow": [row["label"]]},
            {"namespace": "sku", "allow": [row["sku"]]},
        ]
        assert point["crowding_tag"] == row["sku"]


def test_bigquery_skip_existing_appends_and_a_rerun_replaces(cloud):
    uris = list(cloud["catalogue"])
    first = run(cloud, upload_csv(cloud, "lists/first.csv", uris[:8]), "grow", "grow")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(assert_table_equals_output(cloud, "grow", "grow")) == 8

    all_uris = upload_csv(cloud, "lists/all.csv", uris)
    appended = run(cloud, all_uris, "grow", "grow", "--skip_existing")
    assert appended.returncode == 0, appended.stderr[-3000:]
    described = summary_on_gcs(cloud["client"], BUCKET, "grow")["bigquery"]
    assert (described["write"], described["rows_loaded"]) == ("append", len(uris) - 8)
    rows = assert_table_equals_output(cloud, "grow", "grow")
    assert len(rows) == len(uris) and len({row["run_id"] for row in rows}) == 2

    # A table that does not hold the earlier rows is rebuilt from every shard.
    into_new = run(cloud, all_uris, "grow", "fresh", "--skip_existing")
    assert into_new.returncode == 0, into_new.stderr[-3000:]
    described = summary_on_gcs(cloud["client"], BUCKET, "grow")["bigquery"]
    assert (described["write"], described["rows_loaded"]) == ("replace", len(uris))
    assert described["why"] == "the table did not exist"
    assert_table_equals_output(cloud, "fresh", "grow")

    replaced = run(cloud, upload_csv(cloud, "lists/few.csv", uris[:3]), "grow", "grow")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    described = summary_on_gcs(cloud["client"], BUCKET, "grow")["bigquery"]
    assert (described["write"], described["rows_loaded"]) == ("replace", 3)
    assert len(assert_table_equals_output(cloud, "grow", "grow")) == 3


def test_bigquery_and_vector_search_carry_keep_and_an_increment_rewrites_it(cloud):
    """Byte-identical copies under copies/ (smaller URIs, so their groups' representatives)
    drop their photographs; a --skip_existing run that copies a first-run photograph
    rewrites the first run's shard, and the table is rebuilt from every row."""
    photos = list(cloud["catalogue"])
    copies = {}
    for index in (0, 1):
        copy = f"copies/{os.path.basename(PHOTO_PATHS[index])}"
        cloud["bucket"].blob(copy).upload_from_filename(PHOTO_PATHS[index])
        copies[photos[index]] = f"gs://{BUCKET}/{copy}"

    def listed(name: str, uris: list[str]) -> str:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["uri", "label", "sku"])
        for uri in uris:
            row = cloud["catalogue"].get(uri, {"label": "copied", "sku": "SKU-C"})
            writer.writerow([uri, row["label"], row["sku"]])
        cloud["bucket"].blob(name).upload_from_string(text.getvalue())
        return f"gs://{BUCKET}/{name}"

    grouping = ("--duplicate_threshold", "0.999")
    vectors = f"gs://{BUCKET}/vector-search/kept"
    first = [*photos[:6], copies[photos[0]]]
    result = run(
        cloud, listed("lists/kept-1.csv", first), "kept", "kept", *grouping,
        "--vector_search_output", vectors,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    def decisions() -> dict[str, tuple[bool, str | None]]:
        rows = parquet_rows(cloud, "kept")
        uris = sorted(rows)
        stored = np.stack([rows[uri]["embedding"] for uri in uris])
        centred = stored - stored.mean(axis=0)
        unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
        similar = np.argwhere(np.triu(unit @ unit.T, 1) >= 0.999)
        pairs = {frozenset((uris[i], uris[j])) for i, j in similar}
        assert pairs == {frozenset(item) for item in copies.items() if set(item) <= set(uris)}
        return {uri: (row["keep"], row["drop_reason"]) for uri, row in rows.items()}

    expected = {uri: (True, None) for uri in first}
    expected[photos[0]] = (False, f"duplicate_of:{copies[photos[0]]}")
    assert decisions() == expected
    assert_table_equals_output(cloud, "kept", "kept", curated=True)
    files = {
        blob.name: blob.download_as_bytes()
        for blob in cloud["client"].list_blobs(BUCKET, prefix="vector-search/kept/")
    }
    points = check_vector_search_folder(files, "vector-search/kept/", dimensions=2048)
    for uri, (_, why) in expected.items():
        restricts = points[datapoint_id(uri)]["restricts"][2:]  # after label and sku
        assert restricts == (
            [
                {"namespace": "keep", "allow": ["false"]},
                {"namespace": "drop_reason", "allow": [why]},
            ]
            if why
            else [{"namespace": "keep", "allow": ["true"]}]
        )

    second = [*first, copies[photos[1]], *photos[6:8]]
    result = run(
        cloud, listed("lists/kept-2.csv", second), "kept", "kept", *grouping, "--skip_existing"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected |= {uri: (True, None) for uri in second if uri not in first}
    expected[photos[1]] = (False, f"duplicate_of:{copies[photos[1]]}")
    assert decisions() == expected
    summary = summary_on_gcs(cloud["client"], BUCKET, "kept")
    assert summary["embedded"] == 3
    assert summary["keep"] == {
        "kept": len(second) - 2,
        "dropped": 2,
        "dropped_by_reason": {"duplicate_of": 2, "matches": 0},
        "files_rewritten": 2,
    }
    assert len({row["run_id"] for row in parquet_rows(cloud, "kept").values()}) == 2
    described = summary["bigquery"]
    assert (described["write"], described["rows_loaded"]) == ("replace", len(second))
    assert described["why"] == "the run rewrote every row's keep decision"
    assert len(assert_table_equals_output(cloud, "kept", "kept", curated=True)) == len(second)
    leftover = list(cloud["client"].list_blobs(BUCKET, prefix="kept/_runs/"))
    assert leftover == [], [blob.name for blob in leftover]


def test_bigquery_failed_load_fails_the_run_with_bigquerys_error(cloud):
    message = "Error while reading data, error message: Parquet file is truncated (stand-in)"
    earlier = '{"run_id": "earlier"}'
    cloud["bucket"].blob("failing/summary.json").upload_from_string(earlier)
    cloud["standin"].fail_loads_with = message
    try:
        result = run(cloud, upload_csv(cloud, "lists/two.csv", list(cloud["catalogue"])[:2]),
                     "failing", "failing")  # fmt: skip
    finally:
        cloud["standin"].fail_loads_with = None
    assert result.returncode == 1, result.stderr[-3000:]
    [last] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "the BigQuery load failed" in last and message in last
    assert f"{PROJECT}.{DATASET}.failing" not in cloud["standin"].tables
    # Nothing published: the summary still describes the earlier output; the failed
    # run's own summary says why, and the output's lease is given back.
    assert cloud["bucket"].blob("failing/summary.json").download_as_bytes().decode() == earlier
    names = [blob.name for blob in cloud["client"].list_blobs(BUCKET, prefix="failing/")]
    assert not [name for name in names if name.startswith("failing/embeddings/")]
    assert "failing/_lease.json" not in names
    [kept] = [name for name in names if name.endswith("/summary.json") and "/_runs/" in name]
    record = json.loads(cloud["bucket"].blob(kept).download_as_bytes())
    assert record["status"] == "failed" and message in record["failure_reason"]
    # Each of the step's tries started the next attempt, and each failed.
    load = f"image_embeddings_{record['run_id'].replace('T', '_')}_load"
    tried = sorted(job_id for job_id in cloud["standin"].jobs if job_id.startswith(load))
    assert tried == [load, f"{load}_2", f"{load}_3"]


def output_objects(cloud, output: str) -> dict[str, str]:
    """Every object of the output but the runs' own folders, with its MD5."""
    blobs = cloud["client"].list_blobs(BUCKET, prefix=f"{output}/")
    return {blob.name: blob.md5_hash for blob in blobs if "/_runs/" not in blob.name}


def test_bigquery_a_run_that_fails_its_budget_leaves_table_and_output_as_they_were(cloud):
    uris = list(cloud["catalogue"])
    first = run(cloud, upload_csv(cloud, "lists/kept.csv", uris[:4]), "kept", "kept")
    assert first.returncode == 0, first.stderr[-3000:]
    rows_before = sorted(table_rows(cloud, "kept")[0], key=lambda row: row["uri"])
    objects_before = output_objects(cloud, "kept")

    missing = [f"gs://{BUCKET}/photos/missing-{index}.jpg" for index in range(3)]
    for uri in missing:
        cloud["catalogue"][uri] = {"label": "gone", "sku": uri}
    try:
        failed = run(cloud, upload_csv(cloud, "lists/half.csv", [*uris[:3], *missing]),
                     "kept", "kept", "--max_failures", "0")  # fmt: skip
    finally:
        for uri in missing:
            del cloud["catalogue"][uri]
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "3 of 6 inputs failed" in failed.stderr
    # No load ran: the table holds the earlier run's rows, row for row.
    assert sorted(table_rows(cloud, "kept")[0], key=lambda row: row["uri"]) == rows_before
    assert output_objects(cloud, "kept") == objects_before
    assert summary_on_gcs(cloud["client"], BUCKET, "kept")["run_id"] == rows_before[0]["run_id"]


def test_bigquery_missing_dataset_stops_the_run_before_any_work(cloud):
    result = run_cli(
        "--input", upload_csv(cloud, "lists/one.csv", list(cloud["catalogue"])[:1]),
        "--output", f"gs://{BUCKET}/nowhere", "--weights", "random",
        "--bigquery_table", f"{PROJECT}.missing.photos", env=cloud["env"],
    )  # fmt: skip
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == (
        f"error: --bigquery_table {PROJECT}.missing.photos: dataset {PROJECT}.missing "
        "does not exist; create it first (bq mk --dataset)"
    )
    assert not list(cloud["client"].list_blobs(BUCKET, prefix="nowhere/"))


def write_shard(cloud, name: str, rows: int, start: int, run_id: str) -> str:
    """A Parquet shard in the pipeline's schema with seeded random embeddings."""
    generator = np.random.default_rng(start)
    vectors = generator.random((rows, 2048), dtype=np.float32)
    uris = [f"gs://{BUCKET}/synthetic/{i}.jpg" for i in range(start, start + rows)]
    table = embeddings_table(uris, vectors, [(64, 48)] * rows, run_id, "resnet50")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    cloud["bucket"].blob(name).upload_from_string(buffer.getvalue())
    return f"gs://{BUCKET}/{name}"


def load_fn(table: str, output: str, run_id: str, this_run_shards: str, earlier_runs=(), **made):
    """The pipeline's load step, as job.py builds it, for shards a test wrote; earlier_runs:
    the runs whose embeddings the output's summary names."""
    from pipeline.destinations.bigquery import TableLoad, TableName
    from pipeline.outputs import Provenance, RunTarget
    from pipeline.outputs.sinks import parquet_schema

    vector_index = made.pop("vector_index", False)
    return TableLoad(
        TableName(PROJECT, DATASET, table),
        RunTarget(f"gs://{BUCKET}/{output}", run_id, earlier_runs=earlier_runs),
        parquet_schema((2048,), {}).names,
        Provenance.read({**MADE, "jpeg_draft": True, **made}),
        vector_index=vector_index,
        this_run_shards=this_run_shards,
    )


def published(output: str, run_id: str) -> str:
    """The wildcard of a run's shards in the output's embeddings folder."""
    return shard_prefix(f"gs://{BUCKET}/{output}", EMBEDDINGS, run_id) + "-*.parquet"


def uris_and_embeddings(rows) -> dict[str, list[float]]:
    return {row["uri"]: [float(np.float32(v)) for v in row["embedding"]] for row in rows}


def in_this_process(cloud, monkeypatch) -> None:
    """Points this process's Google clients at the stand-ins, as a subprocess's are."""
    from google.auth.compute_engine import _metadata

    for key, value in cloud["env"].items():
        monkeypatch.setenv(key, value)
    # google-auth reads GCE_METADATA_HOST once, at import: another test module in this
    # process may have imported it with its own metadata server's address.
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", cloud["env"]["GCE_METADATA_HOST"])


def test_bigquery_vector_index_once_large_enough_and_a_retried_load_is_not_doubled(
    cloud, monkeypatch
):
    in_this_process(cloud, monkeypatch)
    table = f"{PROJECT}.{DATASET}.large"
    first_run, second_run = "20260101T000000-aaaaaa", "20260101T000001-bbbbbb"
    # 700 rows of 2,048 FLOAT64s: 11.5 MB, past BigQuery's 10 MB for a vector index.
    write_shard(
        cloud, f"large/embeddings/embeddings-{first_run}-00000-of-00001.parquet", 700, 0, first_run
    )
    first_load = load_fn(
        "large", "large", first_run, published("large", first_run), vector_index=True
    )
    described = first_load.load()
    assert described["rows_loaded"] == described["table_rows"] == 700
    assert described["vector_index"]["created"] is True
    index = cloud["standin"].vector_indexes[table]
    assert (index["column"], index["type"], index["distance"]) == ("embedding", "IVF", "COSINE")

    second_shard = f"large/embeddings/embeddings-{second_run}-00000-of-00001.parquet"
    write_shard(cloud, second_shard, 50, 700, second_run)
    append = load_fn(
        "large", "large", second_run, published("large", second_run), vector_index=True
    )
    described = append.load(earlier_rows=700)
    assert (described["write"], described["rows_loaded"], described["table_rows"]) == (
        "append", 50, 750,
    )  # fmt: skip
    assert described["sources"] == [
        f"gs://{BUCKET}/large/embeddings/embeddings-{second_run}-*.parquet"
    ]
    # A retried bundle: BigQuery refuses the job id it already has; the rows stay 750.
    jobs = len(cloud["standin"].jobs)
    retried = append.load(earlier_rows=700)
    assert len(cloud["standin"].jobs) == jobs
    assert retried == {**described, "why": "a retried step found this run's load job"}
    assert cloud["standin"].invalid == []


def test_bigquery_standin_refuses_what_bigquery_would(cloud):
    """The check can fail: a misspelled field and an unknown parameter are refused."""
    import requests

    base = f"{cloud['standin'].address}/bigquery/v2/projects/{PROJECT}"
    bad_body = {"configuration": {"load": {"parquetOption": {"enableListInference": True}}}}
    response = requests.post(f"{base}/jobs", data=json.dumps(bad_body), timeout=10)
    assert response.status_code == 400 and "unknown field 'parquetOption'" in response.text
    response = requests.get(f"{base}/datasets/{DATASET}?verbose=true", timeout=10)
    assert response.status_code == 400 and "unknown query parameter 'verbose'" in response.text
    assert len(cloud["standin"].invalid) == 2
    cloud["standin"].invalid.clear()


def test_bigquery_failed_job_is_followed_by_a_new_attempt(cloud, monkeypatch):
    """A job that failed on a transient backend error keeps its id: the retried step
    starts the next attempt, for the load and for a query job (TRUNCATE) alike."""
    from pipeline.destinations.bigquery import BigQueryLoadError

    in_this_process(cloud, monkeypatch)
    run_id = "20260102T000000-cccccc"
    shard = write_shard(
        cloud, f"retried/embeddings/embeddings-{run_id}-00000-of-00001.parquet", 5, 0, run_id
    )
    load = load_fn("retried", "retried", run_id, published("retried", run_id))
    message = "Backend error: the job could not be completed (stand-in)"
    cloud["standin"].fail_next("load", message)
    with pytest.raises(BigQueryLoadError, match="Backend error"):
        load.load()
    assert f"{PROJECT}.{DATASET}.retried" not in cloud["standin"].tables

    described = load.load()  # the bundle, retried
    first_id = "image_embeddings_20260102_000000-cccccc_load"
    assert described["job_id"] == f"{first_id}_2"
    assert described["attempts"] == [
        {"job_id": first_id, "state": "DONE", "error": message},
        {"job_id": f"{first_id}_2", "state": "DONE", "error": None},
    ]
    assert (described["rows_loaded"], described["table_rows"]) == (5, 5)
    rows, _ = table_rows(cloud, "retried")
    shard_rows = pq.read_table(io.BytesIO(cloud["bucket"].blob(shard[len(f"gs://{BUCKET}/") :])
                               .download_as_bytes())).to_pylist()  # fmt: skip
    assert uris_and_embeddings(rows) == uris_and_embeddings(shard_rows)
    assert table_description(cloud, "retried") == MADE
    # Retried once more: the attempt that succeeded is the step's job; nothing is loaded.
    jobs = len(cloud["standin"].jobs)
    again = load.load()
    assert len(cloud["standin"].jobs) == jobs
    assert again == {**described, "why": "a retried step found this run's load job"}

    # A later run that wrote nothing empties the table with TRUNCATE: the same for it.
    empty_run = "20260102T000001-dddddd"
    truncate = load_fn("retried", "retried", empty_run, published("retried", empty_run))
    cloud["standin"].fail_next("query", message)
    with pytest.raises(BigQueryLoadError, match="Backend error"):
        truncate.load()
    assert len(table_rows(cloud, "retried")[0]) == 5
    described = truncate.load()
    truncate_id = "image_embeddings_20260102_000001-dddddd_truncate"
    assert (described["write"], described["job_id"]) == ("replace", f"{truncate_id}_2")
    assert described["attempts"] == [
        {"job_id": truncate_id, "state": "DONE", "error": message},
        {"job_id": f"{truncate_id}_2", "state": "DONE", "error": None},
    ]
    assert described["table_rows"] == 0 and table_rows(cloud, "retried")[0] == []
    assert cloud["standin"].invalid == []


def test_bigquery_loads_this_runs_shards_from_where_the_caller_says(cloud, monkeypatch):
    """A run's shards still in its own folder: a new table gets the published earlier
    shards and them, an append only them; a table made with other pooling is refused."""
    in_this_process(cloud, monkeypatch)
    earlier_run, this_run, next_run = (
        "20260103T000000-eeeeee", "20260103T000001-ffffff", "20260103T000002-aaaaaa",
    )  # fmt: skip
    output = f"gs://{BUCKET}/staged"
    write_shard(cloud, f"staged/embeddings/embeddings-{earlier_run}-00000-of-00001.parquet",
                3, 0, earlier_run)  # fmt: skip

    def staged(run_id: str, rows: int, start: int) -> str:
        folder = run_folder("staged", run_id)
        write_shard(cloud, f"{folder}/embeddings/embeddings-{run_id}-00000-of-00001.parquet",
                    rows, start, run_id)  # fmt: skip
        return shard_prefix(run_folder(output, run_id), EMBEDDINGS, run_id) + "-*.parquet"

    ours = staged(this_run, 4, 3)
    # A shard of a run that summary.json does not name is never loaded.
    write_shard(cloud, f"staged/embeddings/embeddings-{next_run}-00000-of-00001.parquet",
                5, 100, next_run)  # fmt: skip
    first = load_fn("staged", "staged", this_run, ours, earlier_runs=(earlier_run,))
    described = first.load(earlier_rows=3)
    assert described["why"] == "the table did not exist"
    assert described["sources"] == [f"{output}/embeddings/embeddings-{earlier_run}-*.parquet", ours]
    cloud["bucket"].blob(f"staged/embeddings/embeddings-{next_run}-00000-of-00001.parquet").delete()
    assert (described["write"], described["rows_loaded"], described["table_rows"]) == (
        "replace", 7, 7,
    )  # fmt: skip
    rows, _ = table_rows(cloud, "staged")
    assert sorted(row["uri"] for row in rows) == [
        f"gs://{BUCKET}/synthetic/{i}.jpg" for i in range(7)
    ]

    theirs = staged(next_run, 2, 7)
    # Embeddings made with other pooling must not join the table's.
    other = load_fn("staged", "staged", next_run, theirs, pooling="max")
    with pytest.raises(ValueError, match="--pooling avg; this run makes them with --pooling max"):
        other.load(earlier_rows=7)
    assert len(table_rows(cloud, "staged")[0]) == 7
    described = load_fn("staged", "staged", next_run, theirs).load(earlier_rows=7)
    assert (described["write"], described["sources"], described["table_rows"]) == (
        "append", [theirs], 9,
    )  # fmt: skip
    assert cloud["standin"].invalid == []


def test_bigquery_skip_existing_refuses_a_table_made_with_other_pooling(cloud):
    uris = list(cloud["catalogue"])
    first = run(cloud, upload_csv(cloud, "lists/pooled.csv", uris[:3]), "pooled", "pooled")
    assert first.returncode == 0, first.stderr[-3000:]
    before = table_rows(cloud, "pooled")[0]
    recorded = table_description(cloud, "pooled")
    shards = [b.name for b in cloud["client"].list_blobs(BUCKET, prefix="pooled/embeddings/")]

    # Into an output of its own, whose (no) files agree: the table's record refuses it.
    result = run(cloud, upload_csv(cloud, "lists/pooled-all.csv", uris), "pooled-apart",
                 "pooled", "--skip_existing", "--pooling", "max")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line == (
        f"error: --bigquery_table {PROJECT}.{DATASET}.pooled with --skip_existing: the table "
        "holds embeddings made with --pooling avg; this run makes them with --pooling max, "
        "and one table must not mix the two. Run without --skip_existing to replace the "
        "table, or give another --bigquery_table"
    )
    assert table_rows(cloud, "pooled")[0] == before
    assert table_description(cloud, "pooled") == recorded
    after = [b.name for b in cloud["client"].list_blobs(BUCKET, prefix="pooled/embeddings/")]
    assert after == shards
    assert not list(cloud["client"].list_blobs(BUCKET, prefix="pooled-apart/"))
    assert cloud["standin"].invalid == []

    # Over the output whose files were made with avg pooling, those files refuse it first.
    result = run(cloud, upload_csv(cloud, "lists/pooled-all.csv", uris), "pooled", "pooled",
                 "--skip_existing", "--pooling", "max")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pooling avg there, max here" in result.stderr
    assert table_rows(cloud, "pooled")[0] == before


def test_bigquery_sources_name_each_file_once(tmp_path):
    from pipeline.destinations.bigquery import BigQueryLoadError, loadable

    for name in ("embeddings-a-1.parquet", "embeddings-a-2.parquet", "embeddings-b-1.parquet"):
        (tmp_path / name).write_bytes(b"")
    every, run_a = str(tmp_path / "embeddings-*.parquet"), str(tmp_path / "embeddings-a-*")
    # This run's shards still among the published ones: named once; nothing matched: left out.
    assert loadable([every, run_a, str(tmp_path / "none-*")]) == [every]
    assert loadable([run_a, str(tmp_path / "embeddings-b-*")]) == [
        run_a, str(tmp_path / "embeddings-b-*"),
    ]  # fmt: skip
    with pytest.raises(BigQueryLoadError, match="would load those files twice"):
        loadable([run_a, str(tmp_path / "embeddings-*-1.parquet")])
