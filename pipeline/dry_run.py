"""make dry-run: a Dataflow launch checked and printed before it costs anything.

python -m pipeline.dry_run --project P --region R --bucket B --input gs://... --output gs://...
  [--parameters "name=value,..."]

It launches nothing. It checks the template parameters as the launch would (metadata.json's
patterns, as Dataflow checks them, then the launcher's own parsing), reads the input's first
rows and proves the output writable where Cloud Storage can be reached, and prints the
`gcloud dataflow flex-template run` command and the template spec. Exit 0 when it found no
problem (a check it could not make says "not checked" and why), 2 when it found one, each
as an `error:` line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METADATA = REPO / "metadata.json"
TEMPLATE_NAME = "image-embeddings"  # cloudbuild.yaml's _TEMPLATE_NAME and _IMAGE_NAME
REPOSITORY = "dataflow"  # the README's _REPOSITORY
BUILD_ID = "BUILD_ID"  # the image tag Cloud Build gives, unknown before it runs
ROWS_READ = 1000  # the input's rows counted, at most: enough to show it reads
PROBE_TIMEOUT_S = 10
# gcloud's own escape for a --parameters value holding a comma: ^DELIMITER^ first.
DELIMITERS = "~|;#@%"
# make dry-run's variables, each the flag of the same name in lower case.
FLAGS = ("project", "region", "bucket", "input", "output", "parameters", "job_name",
         "machine_type", "template", "image")  # fmt: skip
DATAFLOW_JOB_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# gcloud --print-only needs no account and no network; keep it from looking for either.
OFFLINE_GCLOUD = {
    "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
    "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
    "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
    "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true",
    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
}


class Problem(ValueError):
    """Something the launch would meet: printed as one `error:` line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise Problem(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The dry run's own flags (make dry-run's variables); an empty value is not given."""
    parser = _Parser(prog="python -m pipeline.dry_run", allow_abbrev=False)
    for name in FLAGS:
        parser.add_argument(f"--{name}", default="")
    args = parser.parse_args(list(argv))
    for name, variable in (("project", "PROJECT"), ("region", "REGION"), ("bucket", "BUCKET")):
        if not getattr(args, name):
            raise Problem(f"{variable} is required: make dry-run PROJECT=... REGION=... BUCKET=...")
    args.job_name = args.job_name or time.strftime("embeddings-%Y%m%d-%H%M%S", time.gmtime())
    args.template = args.template or f"gs://{args.bucket}/templates/{TEMPLATE_NAME}.json"
    args.image = (
        args.image
        or f"{args.region}-docker.pkg.dev/{args.project}/{REPOSITORY}/{TEMPLATE_NAME}:{BUILD_ID}"
    )
    return args


# --- The template parameters, as gcloud reads them and Dataflow checks them ----------------


def gcloud_parameters(text: str) -> dict[str, str]:
    """A --parameters value read as gcloud reads it: name=value pairs split at commas, or
    at the DELIMITER of a leading ^DELIMITER^."""
    if not text:
        return {}
    delimiter = ","
    if text.startswith("^") and "^" in text[1:]:
        delimiter, text = text[1:].split("^", 1)
    parameters: dict[str, str] = {}
    for item in text.removesuffix(delimiter).split(delimiter):
        name, equals, value = item.partition("=")
        if not name or not equals:
            raise Problem(
                f"PARAMETERS: {item!r} is not name=value (a value with a comma needs "
                "gcloud's escape: PARAMETERS='^~^keep_columns=a,b~neighbors=5')"
            )
        if name in parameters:
            raise Problem(f"PARAMETERS names {name} twice")
        parameters[name] = value
    return parameters


def launch_parameters(args: argparse.Namespace) -> dict[str, str]:
    """INPUT and OUTPUT, then PARAMETERS: the launch's template parameters."""
    given = {name: getattr(args, name) for name in ("input", "output") if getattr(args, name)}
    more = gcloud_parameters(args.parameters)
    for name in set(given) & set(more):
        raise Problem(f"{name} is given twice: as {name.upper()}= and in PARAMETERS")
    return {**given, **more}


def check_metadata(parameters: dict[str, str], metadata: dict) -> list[str]:
    """Raises Problem as Dataflow refuses a launch (a required parameter missing, a value
    its pattern does not match); returns warnings for names metadata.json lacks."""
    declared = {parameter["name"]: parameter for parameter in metadata["parameters"]}
    for name, parameter in declared.items():
        if not parameter.get("isOptional") and name not in parameters:
            raise Problem(f"the template parameter {name} is required ({name.upper()}=...)")
    warnings = []
    for name, value in parameters.items():
        if name not in declared:
            warnings.append(
                f"{name} is not declared in metadata.json: the launcher's parser takes it "
                "(a Beam flag), but Dataflow may refuse a parameter the template lacks"
            )
            continue
        for pattern in declared[name].get("regexes", []):
            if not re.fullmatch(pattern, value):
                raise Problem(
                    f"the template parameter {name}={value} does not match {pattern} "
                    "(metadata.json), so Dataflow would refuse the launch"
                )
    return warnings


def launcher_argv(args: argparse.Namespace, parameters: dict[str, str]) -> list[str]:
    """The command line the Flex Template launcher gives templates/main.py: its own flags
    from the launch, the parameters as --name=value, then the worker image it adds."""
    from pipeline.launch import with_worker_image

    own = {
        "runner": "DataflowRunner",
        "project": args.project,
        "region": args.region,
        "job_name": args.job_name,
        "staging_location": f"gs://{args.bucket}/staging",
        "temp_location": f"gs://{args.bucket}/tmp",
    }
    argv = [f"--{name}={value}" for name, value in {**own, **parameters}.items()]
    return with_worker_image(argv, args.image)


def check_options(args: argparse.Namespace, parameters: dict[str, str]):
    """The launcher's own parsing (pipeline.options.parse_options); Problem if it refuses."""
    from pipeline.options import EmbeddingOptions, UsageError, parse_options

    if not DATAFLOW_JOB_NAME.fullmatch(args.job_name):
        pattern = DATAFLOW_JOB_NAME.pattern
        raise Problem(f"JOB_NAME {args.job_name}: Dataflow job names match {pattern}")
    try:
        return parse_options(launcher_argv(args, parameters)).view_as(EmbeddingOptions)
    except UsageError as error:
        raise Problem(str(error)) from None


# --- Cloud Storage: reached or not, then the input and the output ------------------------


def storage_unavailable(path: str, project: str) -> str | None:
    """Why Cloud Storage cannot be asked about path from here, or None when it answers.

    Beam asks google-auth for credentials before it reads gs:// (retrying for half a
    minute when there are none), and its client retries a dead network for minutes: one
    quick request, without retries, tells either apart from a real answer first.
    """
    import google.auth
    import requests
    from google.auth import exceptions
    from google.cloud import storage

    try:
        credentials, _ = google.auth.default()
    except exceptions.DefaultCredentialsError:
        return (
            "no Google Cloud credentials on this machine (`gcloud auth application-default "
            "login` gives them)"
        )
    bucket, _, name = path.removeprefix("gs://").partition("/")
    client = storage.Client(project=project, credentials=credentials)
    try:
        client.bucket(bucket).blob(name or ".").exists(timeout=PROBE_TIMEOUT_S, retry=None)
    except (exceptions.TransportError, requests.ConnectionError, requests.Timeout) as error:
        return f"Cloud Storage cannot be reached ({_first_line(error)})"
    except exceptions.RefreshError as error:
        return f"your credentials could not be refreshed ({_first_line(error)})"
    except Exception:
        return None  # it answered (403, 404, ...): the checks say what that means
    return None


def check_input(path: str, keep: tuple[str, ...] = (), uri_column: str = "") -> str:
    """How many rows the input's start holds and its first URI, read as the pipeline reads
    them; raises Problem for an input the launch or the run would refuse (no such file, no
    match, no rows, a URI column or --keep_columns its header or Parquet schema lacks)."""
    from apache_beam.io.filesystems import FileSystems

    from pipeline.inputs import (
        InputError,
        check_glob,
        count_inputs,
        first_uris,
        is_glob,
        is_manifest,
        keep_columns_layout,
        lists_shards,
    )

    try:
        if is_glob(path):
            check_glob(path)
        keep_columns_layout(path, keep, uri_column)
        shards = lists_shards(path, uri_column)
        rows = None if shards else count_inputs(path, ROWS_READ, uri_column)
        if rows == 0:
            raise Problem(f"--input {path}: no rows (a run with no input rows fails)")
        if is_glob(path) and not is_manifest(path) and not shards:
            first = FileSystems.match([path], limits=[1])[0].metadata_list[0].path
        else:
            [first] = first_uris(path, 1, uri_column) or [None]
    except InputError as error:
        raise Problem(str(error)) from None
    except Problem:
        raise
    except Exception as error:
        raise Problem(f"--input {path}: cannot read it ({_reason(error)})") from None
    if first is None:
        held = "no shard read holds an image" if shards else "no row holds an image URI"
        raise Problem(f"--input {path}: {held}")
    if shards:
        counted = "WebDataset shards (their images are counted as they are read)"
    else:
        counted = f"{rows} rows" if rows is not None else f"more than {ROWS_READ} rows"
    return f"{path}: {counted}, the first {first}"


def check_output(path: str, flag: str) -> str:
    """That a file can be created and deleted under path, as the launcher proves it."""
    from pipeline.options import UsageError
    from pipeline.run import preflight

    try:
        preflight.check_output(path, flag)
    except UsageError as error:
        raise Problem(str(error)) from None
    return f"{path}: writable (a probe object was created and deleted)"


# --- What it prints -------------------------------------------------------------------------


def gcloud_run(args: argparse.Namespace, parameters: dict[str, str]) -> list[str]:
    """The README's `gcloud dataflow flex-template run`, for these values."""
    command = ["gcloud", "dataflow", "flex-template", "run", args.job_name]
    command += ["--project", args.project, "--region", args.region]
    command += ["--template-file-gcs-location", args.template]
    command += ["--staging-location", f"gs://{args.bucket}/staging"]
    command += ["--temp-location", f"gs://{args.bucket}/tmp"]
    for name, value in parameters.items():
        command += ["--parameters", gcloud_pair(name, value)]
    if args.machine_type:
        command += ["--worker-machine-type", args.machine_type]
    return command


def gcloud_pair(name: str, value: str) -> str:
    """name=value as one --parameters value, escaped for gcloud when it holds a comma."""
    pair = f"{name}={value}"
    if "," not in pair:
        return pair
    delimiter = next(d for d in DELIMITERS if d not in pair)
    return f"^{delimiter}^{pair}"


def shell_lines(command: list[str]) -> str:
    """The command as the README writes it: a flag and its value per line, quoted."""
    flag_at = next(i for i, word in enumerate(command) if word.startswith("--"))
    lines = [shlex.join(command[:flag_at])]
    for word in command[flag_at:]:
        if word.startswith("--"):
            lines.append(f"  {word}")
        else:
            lines[-1] += f" {shlex.quote(word)}"
    return " \\\n".join(lines)


def gcloud_build(template: str, image: str) -> list[str]:
    """cloudbuild.yaml's template step, printing the spec instead of writing it."""
    return [
        "gcloud", "dataflow", "flex-template", "build", template,
        "--image", image, "--sdk-language", "PYTHON", "--metadata-file", "metadata.json",
        "--print-only",
    ]  # fmt: skip


def template_spec(template: str, image: str) -> tuple[str, str]:
    """The spec JSON and where it came from: gcloud's --print-only, or, without gcloud,
    the same JSON built here."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        spec = {
            "defaultEnvironment": {},
            "image": image,
            "metadata": json.loads(METADATA.read_text()),
            "sdkInfo": {"language": "PYTHON"},
        }
        return json.dumps(spec, indent=4), "gcloud is not installed: built here as gcloud builds it"
    command = [gcloud, *gcloud_build(template, image)[1:]]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, **OFFLINE_GCLOUD},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    if result.returncode != 0:
        raise Problem(f"gcloud could not build the template spec: {_last_line(result.stderr)}")
    printed = result.stdout
    if printed.startswith("|"):  # a YAML block string
        printed = textwrap.dedent(printed.split("\n", 1)[1])
    json.loads(printed)
    return printed.strip(), f"as `{shlex.join(gcloud_build(template, image))}` prints it"


# --- The run ----------------------------------------------------------------------------


def storage_checks(opts, project: str) -> tuple[list[str], list[str]]:
    """The input and output lines, and the problems found; where Cloud Storage cannot be
    asked, no check is made and each line says why."""
    from pipeline.options import kept_columns

    lines, problems = [], []
    reason = storage_unavailable(opts.input, project)
    checks = [("input", lambda: check_input(opts.input, kept_columns(opts), opts.uri_column))]
    checks.append(("output", lambda: check_output(opts.output, "--output")))
    if opts.vector_search_output:
        folder = opts.vector_search_output
        checks.append(("vectors", lambda: check_output(folder, "--vector_search_output")))
    for name, check in checks:
        if reason:
            lines.append(f"{name + ':':9} not checked: {reason}")
            continue
        try:
            lines.append(f"{name + ':':9} ok: {check()}")
        except Problem as error:
            lines.append(f"{name + ':':9} refused (see the error below)")
            problems.append(str(error))
    return lines, problems


def dry_run(argv: Sequence[str]) -> int:
    """Prints the checks, the launch and the spec; 0 when no problem was found, else 2."""
    try:
        args = parse_args(argv)
        parameters = launch_parameters(args)
        warnings = check_metadata(parameters, json.loads(METADATA.read_text()))
        opts = check_options(args, parameters)
    except Problem as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("Dry run of a Dataflow launch: nothing is launched.")
    print(
        f"options:  ok: DataflowRunner, project {args.project}, region {args.region}, "
        f"job {args.job_name}: metadata.json's patterns and the launcher's parser pass them"
    )
    lines, problems = storage_checks(opts, args.project)
    print("\n".join(lines))
    try:
        spec, source = template_spec(args.template, args.image)
    except Problem as error:
        spec, source = None, None
        problems.append(str(error))
    heading = "The launch" if not problems else "The launch, once the problems below are fixed"
    print(f"\n{heading}:\n\n{shell_lines(gcloud_run(args, parameters))}\n")
    if spec is not None:
        print(f"The template spec the build writes to {args.template}, {source}:\n\n{spec}")
    sys.stdout.flush()
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def _reason(error: BaseException) -> str:
    status = getattr(error, "code", None)
    text = _first_line(error)
    return f"{type(error).__name__}{f' {status}' if isinstance(status, int) else ''}: {text}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


if __name__ == "__main__":
    sys.exit(dry_run(sys.argv[1:]))
