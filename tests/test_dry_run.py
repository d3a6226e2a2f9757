"""make dry-run, offline: the real make, gcloud and GCS API (an emulator on loopback)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
from cloud import (
    BUCKET,
    GCLOUD,
    PROJECT,
    REGION,
    MetadataServer,
    StandIn,
    emulator_client,
    free_port,
    gcloud_config,
    readme_block,
    storage_emulator,
)
from support import PHOTO_PATHS, REPO

from pipeline import dry_run

pytestmark = [
    pytest.mark.skipif(GCLOUD is None, reason="gcloud is not installed"),
    # Fresh interpreters, make and gcloud, side by side: about 7 s of both cores.
    pytest.mark.slow,
]

METADATA = json.loads((REPO / "metadata.json").read_text())
PHOTOS = [f"gs://{BUCKET}/photos/{os.path.basename(path)}" for path in PHOTO_PATHS[:4]]
LIST = f"gs://{BUCKET}/lists/photos.csv"  # the README's input
# make's variables that would otherwise come from the caller's environment.
MAKE_VARIABLES = [name.upper() for name in dry_run.FLAGS]
# make runs this interpreter's venv and never rebuilds it, whatever the files' times.
VENV = shlex.quote(sys.prefix)
# --no-print-directory: under `make test` the inner make would add its Entering lines.
MAKE = (
    f"make() {{ command make --no-print-directory VENV={VENV} "
    f'--old-file={VENV}/.installed "$@"; }}\n'
)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """An emulated bucket holding 4 photographs and a CSV of them with two more columns;
    the environment that reaches it, with credentials from a metadata server stand-in."""
    folder = tmp_path_factory.mktemp("dry-run")
    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            bucket = emulator_client(emulator).bucket(BUCKET)
            for uri, path in zip(PHOTOS, PHOTO_PATHS, strict=False):
                bucket.blob(uri.removeprefix(f"gs://{BUCKET}/")).upload_from_filename(path)
            rows = [["uri", "caption", "credit"]]
            rows += [[uri, f"photo {n}, sample", "scikit-image"] for n, uri in enumerate(PHOTOS)]
            with open(folder / "photos.csv", "w", newline="") as handle:
                csv.writer(handle).writerows(rows)
            bucket.blob("lists/photos.csv").upload_from_filename(str(folder / "photos.csv"))
            env = gcloud_config(folder / "gcloud", PROJECT, {})
            env = {k: v for k, v in env.items() if k not in MAKE_VARIABLES}
            env.update(STORAGE_EMULATOR_HOST=emulator, **metadata.environment)
            yield {"env": env, "bucket": bucket, "folder": folder}
    finally:
        metadata.close()


def dry_run_command(**variables: str) -> list[str]:
    """python -m pipeline.dry_run with make's variables as its flags."""
    flags = [f"--{name}={value}" for name, value in variables.items()]
    return [sys.executable, "-m", "pipeline.dry_run", *flags]


def run_all(commands: dict[str, tuple[list[str], dict[str, str]]]) -> dict:
    """Runs the commands side by side (each mostly waits on its imports); their results
    by name. Every process is ended, also when one fails."""
    started = {}
    try:
        for name, (command, env) in commands.items():
            started[name] = subprocess.Popen(
                command, cwd=REPO, env=env, text=True, stdout=PIPE, stderr=PIPE
            )
        results = {}
        for name, process in started.items():
            stdout, stderr = process.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode,
                                                        stdout, stderr)  # fmt: skip
        return results
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def printed_command(stdout: str) -> list[str]:
    """The gcloud command the dry run printed, as the shell would split it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("gcloud dataflow"))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    return shlex.split("\n".join(lines[start : end + 1]).replace("\\\n", " "))


def printed_spec(stdout: str) -> dict:
    """The template spec: the JSON that ends the dry run's output."""
    return json.loads(stdout[stdout.index("\n{\n") :])


def readme_launch_argv() -> list[str]:
    """The README's launch command, as bash expands it."""
    script = 'gcloud() { printf "%s\\0" gcloud "$@"; }\n' + readme_block(
        'gcloud dataflow flex-template run "embeddings-$(date'
    )
    env = {**os.environ, "PROJECT": PROJECT, "REGION": REGION, "BUCKET": BUCKET}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\0")[:-1]


def without_credentials(folder: Path) -> dict[str, str]:
    """A machine with no Google Cloud credentials: none in gcloud's configuration, none
    named by GOOGLE_APPLICATION_CREDENTIALS, no metadata server."""
    env = gcloud_config(folder / "gcloud", PROJECT, {})
    env = {k: v for k, v in env.items() if k not in MAKE_VARIABLES}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: no request leaves this machine
    # NO_GCE_CHECK: google-auth asks no metadata server (it would wait 3 s for none).
    env.update(GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed, NO_GCE_CHECK="true")
    return env


def authorized_user(folder: Path, token_port: int) -> Path:
    """Application default credentials of a user, refreshed at a closed loopback port."""
    path = folder / "adc.json"
    path.write_text(json.dumps({
        "type": "authorized_user", "client_id": "id", "client_secret": "secret",
        "refresh_token": "token", "token_uri": f"http://127.0.0.1:{token_port}/token",
    }))  # fmt: skip
    return path


COLUMNS = "^~^keep_columns=caption,credit~neighbors=5~max_num_workers=20"
MISSING = f"gs://{BUCKET}/lists/missing.csv"


@pytest.fixture(scope="module")
def runs(cloud, tmp_path_factory):
    """The dry runs of this file, side by side: the README's `make dry-run` block run by
    bash, then the module with kept columns, with a missing input, and without credentials."""
    env = cloud["env"]
    readme = {**env, "PROJECT": PROJECT, "REGION": REGION, "BUCKET": BUCKET}
    where = {"project": PROJECT, "region": REGION, "bucket": BUCKET}
    out = f"gs://{BUCKET}/out"
    commands = {
        "readme": (["bash", "-c", MAKE + readme_block("make dry-run")], readme),
        "columns": (dry_run_command(**where, input=LIST, output=f"gs://{BUCKET}/embeddings/run2",
                                    parameters=COLUMNS, job_name="embeddings-dry-run"), env),
        "missing input": (dry_run_command(**where, input=MISSING, output=out), env),
        "no credentials": (dry_run_command(**where, input=LIST, output=out),
                           without_credentials(tmp_path_factory.mktemp("offline"))),
    }  # fmt: skip
    return run_all(commands)


def test_the_readme_dry_run_reads_the_bucket_and_prints_the_readmes_launch(runs):
    result = runs["readme"]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[1].startswith(f"options:  ok: DataflowRunner, project {PROJECT}, region {REGION}")
    assert lines[2] == f"input:    ok: {LIST}: 4 rows, the first {PHOTOS[0]}"
    assert lines[3] == (
        f"output:   ok: gs://{BUCKET}/embeddings/run1: writable "
        "(a probe object was created and deleted)"
    )
    command, readme = printed_command(result.stdout), readme_launch_argv()
    assert command[4].startswith("embeddings-") and readme[4].startswith("embeddings-")
    assert command[:4] + command[5:] == readme[:4] + readme[5:]  # all but the job's name


def test_the_spec_is_gclouds_with_metadata_json(runs, cloud, monkeypatch):
    spec = printed_spec(runs["readme"].stdout)
    assert spec["metadata"] == METADATA
    assert spec["image"] == f"{REGION}-docker.pkg.dev/{PROJECT}/dataflow/image-embeddings:BUILD_ID"
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    # Without gcloud, the dry run builds the same JSON itself.
    monkeypatch.setattr(dry_run.shutil, "which", lambda name: None)
    built, source = dry_run.template_spec(f"gs://{BUCKET}/templates/x.json", spec["image"])
    assert json.loads(built) == spec and source.startswith("gcloud is not installed")
    # No probe object is left: the dry runs leave the bucket as they found it.
    names = {blob.name for blob in cloud["bucket"].list_blobs()}
    assert names == {"lists/photos.csv", *(uri.split("/", 3)[3] for uri in PHOTOS)}


def test_kept_columns_are_checked_and_commas_reach_gcloud_unchanged(runs, tmp_path):
    result = runs["columns"]
    assert result.returncode == 0, result.stderr
    assert f"input:    ok: {LIST}: 4 rows" in result.stdout
    command = printed_command(result.stdout)
    assert command[4] == "embeddings-dry-run"
    assert "^~^keep_columns=caption,credit" in command
    # What gcloud itself makes of the printed command: the launch request Dataflow gets.
    launch = launch_request(result.stdout, tmp_path)["launchParameter"]
    assert launch["parameters"] == {
        "input": LIST,
        "output": f"gs://{BUCKET}/embeddings/run2",
        "keep_columns": "caption,credit",
        "neighbors": "5",
        "max_num_workers": "20",
    }
    assert launch["jobName"] == "embeddings-dry-run"
    assert launch["environment"]["tempLocation"] == f"gs://{BUCKET}/tmp"


def launch_request(stdout: str, tmp_path: Path) -> dict:
    """The request the printed command sends, through the real gcloud, to a stand-in."""
    stand_in = StandIn({"job": {"id": "2026-01-01_00_00_00-1", "projectId": PROJECT}})
    try:
        env = gcloud_config(tmp_path / "gcloud", PROJECT, {"dataflow": stand_in.url})
        script = shlex.join(printed_command(stdout))
        result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    finally:
        stand_in.close()
    [request] = stand_in.requests
    return request["body"]


def test_a_bad_option_is_one_error_line_and_exit_2(capsys):
    # metadata.json's patterns pass it; the pipeline's own parser refuses it, before any
    # look for credentials or storage.
    argv = [f"--project={PROJECT}", f"--region={REGION}", f"--bucket={BUCKET}", f"--input={LIST}",
            f"--output=gs://{BUCKET}/out", "--parameters=pooling=none,map=true"]  # fmt: skip
    assert dry_run.dry_run(argv) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    [line] = printed.err.splitlines()
    assert line.startswith("error: --map needs pooled embeddings")


def test_an_input_that_does_not_exist_is_refused(runs):
    result = runs["missing input"]
    assert result.returncode == 2
    assert "input:    refused (see the error below)" in result.stdout
    assert f"output:   ok: gs://{BUCKET}/out: writable" in result.stdout
    [line] = result.stderr.splitlines()
    assert line == f"error: --input {MISSING}: no such file (give a CSV of image URIs or a glob)"
    assert printed_command(result.stdout)[:4] == ["gcloud", "dataflow", "flex-template", "run"]


def test_without_credentials_the_checks_say_not_checked_and_the_launch_prints(runs):
    result = runs["no credentials"]
    assert result.returncode == 0, result.stderr
    reason = "not checked: no Google Cloud credentials on this machine"
    assert f"input:    {reason}" in result.stdout
    assert f"output:   {reason}" in result.stdout
    assert printed_command(result.stdout)[:4] == ["gcloud", "dataflow", "flex-template", "run"]
    assert printed_spec(result.stdout)["metadata"] == METADATA


def test_without_a_network_cloud_storage_is_not_reached(tmp_path, monkeypatch):
    # Credentials, and nothing that answers: storage and token server both on closed ports.
    adc = authorized_user(tmp_path, free_port())
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    reason = dry_run.storage_unavailable(LIST, PROJECT)
    assert reason is not None and reason.startswith("Cloud Storage cannot be reached (")


def test_parameters_are_read_as_gcloud_reads_them():
    assert dry_run.gcloud_parameters("a=1,b=x=y") == {"a": "1", "b": "x=y"}
    assert dry_run.gcloud_parameters("^~^a=1,2~b=") == {"a": "1,2", "b": ""}
    for bad in ("a", "a=1,,b=2", "a=1,a=2"):
        with pytest.raises(dry_run.Problem):
            dry_run.gcloud_parameters(bad)


def test_metadata_patterns_refuse_what_dataflow_would():
    given = {"input": LIST, "output": f"gs://{BUCKET}/out"}
    assert dry_run.check_metadata(given, METADATA) == []
    with pytest.raises(dry_run.Problem, match="neighbors=500 does not match"):
        dry_run.check_metadata({**given, "neighbors": "500"}, METADATA)
    with pytest.raises(dry_run.Problem, match="output is required"):
        dry_run.check_metadata({"input": LIST}, METADATA)
    with pytest.raises(dry_run.Problem, match=r"input=images\.csv does not match"):
        dry_run.check_metadata({**given, "input": "images.csv"}, METADATA)
    [warning] = dry_run.check_metadata({**given, "num_workers": "3"}, METADATA)
    assert warning.startswith("num_workers is not declared in metadata.json")
