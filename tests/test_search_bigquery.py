"""search-images --bigquery_table: VECTOR_SEARCH on the table a real run loaded into the
BigQuery stand-in (every request held to BigQuery's discovery document), equal to the
search over the same output's Parquet shards, read from the Cloud Storage emulator."""

from __future__ import annotations

import json
import os

import pytest
from bigquery_standin import BigQueryStandIn
from cloud import PROJECT, MetadataServer, emulator_client, storage_emulator
from support import PHOTO_PATHS, run_cli
from test_search import json_results, one_line_refusal, run_search

pytestmark = pytest.mark.pipeline_run

BUCKET = "search-bucket"
DATASET = "images"
TABLE = f"{PROJECT}.{DATASET}.photos"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """The photographs on gs://, embedded with seeded random weights and loaded into the
    stand-in's table by the run itself."""
    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            standin = BigQueryStandIn(PROJECT, [f"{PROJECT}.{DATASET}"], emulator)
            try:
                bucket = emulator_client(emulator).bucket(BUCKET)
                lines = ["uri,label"]
                uris = []
                for path in PHOTO_PATHS:
                    name = f"photos/{os.path.basename(path)}"
                    bucket.blob(name).upload_from_filename(path)
                    uris.append(f"gs://{BUCKET}/{name}")
                    lines.append(f"{uris[-1]},{os.path.splitext(os.path.basename(path))[0]}")
                bucket.blob("lists/photos.csv").upload_from_string("\n".join(lines) + "\n")
                env = {
                    "STORAGE_EMULATOR_HOST": emulator,
                    **metadata.environment,
                    "BIGQUERY_EMULATOR_HOST": standin.address,
                }
                output = f"gs://{BUCKET}/out"
                result = run_cli(
                    "--input", f"gs://{BUCKET}/lists/photos.csv", "--output", output,
                    "--weights", "random", "--precision", "float32", "--seed", "7",
                    "--keep_columns", "label",
                    "--num_shards", "2", "--bigquery_table", TABLE, env=env,
                )  # fmt: skip
                assert result.returncode == 0, result.stderr[-3000:]
                assert len(standin.tables[TABLE]["rows"]) == len(PHOTO_PATHS)
                yield {"standin": standin, "env": env, "output": output, "uris": uris}
            finally:
                standin.close()
    finally:
        metadata.close()


def test_vector_search_on_the_table_equals_the_parquet_search(loaded):
    standin, env, output = loaded["standin"], loaded["env"], loaded["output"]
    for query in (loaded["uris"][1], loaded["uris"][9]):
        args = (output, "--image", query, "--k", "5", "--json")
        on_table = json_results(run_search(*args, "--bigquery_table", TABLE, env=env))
        on_shards = json_results(run_search(*args, env=env))
        assert [row["uri"] for row in on_table] == [row["uri"] for row in on_shards]
        assert on_table[0]["uri"] == query and abs(on_table[0]["similarity"] - 1) < 1e-6
        for table_row, shard_row in zip(on_table, on_shards, strict=True):
            assert abs(table_row["similarity"] - shard_row["similarity"]) < 1e-9
            assert table_row["label"] == shard_row["label"]
            assert table_row["rank"] == shard_row["rank"]
    assert standin.invalid == []
    # The query vector travelled as a parameter, not as text in the statement.
    search = standin.searches[-1]
    [parameter] = search["configuration"]["queryParameters"]
    assert parameter["parameterType"] == {"type": "ARRAY", "arrayType": {"type": "FLOAT64"}}
    assert len(parameter["parameterValue"]["arrayValues"]) == 2048
    assert parameter["parameterValue"]["arrayValues"][0]["value"] not in search["statement"]
    assert "top_k => 5" in search["statement"] and "@query" in search["statement"]


def test_a_table_made_another_way_is_refused(loaded):
    standin, env = loaded["standin"], loaded["env"]
    table = standin.tables[TABLE]
    saved = table["description"]
    made = json.loads(saved)
    table["description"] = json.dumps({**made, "model": "resnet101"})
    try:
        result = run_search(loaded["output"], "--image", loaded["uris"][0], "--bigquery_table",
                            TABLE, env=env)  # fmt: skip
    finally:
        table["description"] = saved
    line = one_line_refusal(result)
    assert "resnet101" in line and TABLE in line
