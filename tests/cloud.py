"""Real cloud tools pointed at this machine: gcloud, a GCS emulator, API stand-ins."""

from __future__ import annotations

import base64
import contextlib
import http.server
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import REPO

GCLOUD = shutil.which("gcloud")
# The project, region and bucket of launches, and the job's service account.
PROJECT, REGION, BUCKET = "my-project", "europe-west1", "my-bucket"
SERVICE_ACCOUNT = f"worker@{PROJECT}.iam.gserviceaccount.com"


# --- Google APIs' own schemas (Dataflow, BigQuery) ---------------------------------


def discovery_document(api: str = "dataflow.v1b3") -> dict:
    """An API's discovery document as shipped inside google-api-python-client."""
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / f"discovery_cache/documents/{api}.json"
    return json.loads(path.read_text())


def schema_errors(value, schema_name: str, document: dict | None = None) -> list[str]:
    """Checks value against a discovery schema: field names, types and enums."""
    document = document or discovery_document()
    errors: list[str] = []

    def check(item, schema: dict, where: str) -> None:
        if "$ref" in schema:
            schema = document["schemas"][schema["$ref"]]
        kind = schema.get("type")
        if kind == "object":
            if not isinstance(item, dict):
                errors.append(f"{where}: expected an object")
                return
            properties = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            for key, child in item.items():
                if key in properties:
                    check(child, properties[key], f"{where}.{key}")
                elif extra:
                    check(child, extra, f"{where}.{key}")
                else:
                    errors.append(f"{where}: unknown field {key!r}")
        elif kind == "array":
            if not isinstance(item, list):
                errors.append(f"{where}: expected an array")
                return
            for index, child in enumerate(item):
                check(child, schema["items"], f"{where}[{index}]")
        elif kind == "string":
            int64 = schema.get("format") in ("int64", "uint64")
            if not isinstance(item, str) and not (int64 and isinstance(item, int)):
                errors.append(f"{where}: expected a string, got {item!r}")
            elif "enum" in schema and item not in schema["enum"]:
                errors.append(f"{where}: {item!r} is not one of {schema['enum']}")
        elif kind == "integer":
            if isinstance(item, bool) or not isinstance(item, int):
                errors.append(f"{where}: expected an integer, got {item!r}")
        elif kind == "boolean":
            if not isinstance(item, bool):
                errors.append(f"{where}: expected a boolean, got {item!r}")
        elif kind == "number" and (isinstance(item, bool) or not isinstance(item, int | float)):
            errors.append(f"{where}: expected a number, got {item!r}")

    check(value, {"$ref": schema_name}, schema_name)
    return errors


# --- Local HTTP servers: an API stand-in, the metadata server, a faulty proxy --------


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that does not log, with one call to send a whole answer."""

    def reply(self, status: int, body: bytes, headers: dict[str, str] | list[tuple]) -> None:
        self.send_response(status)
        pairs = headers.items() if isinstance(headers, dict) else headers
        for key, value in pairs:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LoopbackServer:
    """An HTTP server on 127.0.0.1, serving from a daemon thread until close()."""

    def _start(
        self, handler: type[http.server.BaseHTTPRequestHandler], quiet_errors: bool = False
    ) -> int:
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if quiet_errors:
            self._server.handle_error = lambda request, address: None
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class StandIn(LoopbackServer):
    """Answers every POST like the API would on success, and keeps the requests."""

    def __init__(self, response: dict):
        self.requests: list[dict] = []
        stand_in = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stand_in.requests.append({"path": self.path, "body": json.loads(body or b"{}")})
                payload = json.dumps(response).encode()
                self.reply(200, payload, {"Content-Type": "application/json"})

        self.url = f"http://127.0.0.1:{self._start(Handler)}/"


class MetadataServer(LoopbackServer):
    """A stand-in for the GCE metadata server, as Dataflow workers have one.

    google-auth (GCE_METADATA_HOST / GCE_METADATA_IP) then finds credentials at once
    instead of Beam retrying the look-up for about 15 s in every process; the tokens
    it hands out only ever reach the emulator. Paths it does not know get a 404, as
    on the real server.
    """

    def __init__(self):
        token = {"access_token": "offline", "expires_in": 3600, "token_type": "Bearer"}
        account = {
            "email": SERVICE_ACCOUNT,
            "aliases": ["default"],
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
        }
        v1 = "/computeMetadata/v1"
        answers = {
            "/": "computeMetadata/",  # google-auth's ping reads only the Metadata-Flavor header
            f"{v1}/project/project-id": PROJECT,
            f"{v1}/universe/universe-domain": "googleapis.com",
        }
        # A refreshed credential asks by its email from then on, not by "default".
        for name in ("default", SERVICE_ACCOUNT):
            answers[f"{v1}/instance/service-accounts/{name}/"] = json.dumps(account)
            answers[f"{v1}/instance/service-accounts/{name}/token"] = json.dumps(token)
        self.paths: list[str] = []
        stand_in = self

        class Handler(QuietHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                stand_in.paths.append(path)
                body = answers.get(path)
                if body is None:
                    self.reply(404, b"Not Found", {"Content-Type": "text/html"})
                    return
                kind = "application/json" if body.startswith("{") else "application/text"
                self.reply(200, body.encode(), {"Metadata-Flavor": "Google", "Content-Type": kind})

        self.address = f"127.0.0.1:{self._start(Handler)}"

    @property
    def environment(self) -> dict[str, str]:
        return metadata_environment(self.address)


def metadata_environment(address: str) -> dict[str, str]:
    """The variables that point google-auth at a metadata server."""
    return {"GCE_METADATA_HOST": address, "GCE_METADATA_IP": address}


def gcloud_config(directory: Path, project: str, overrides: dict[str, str]) -> dict[str, str]:
    """An isolated gcloud configuration: no credentials, APIs sent to local URLs.

    Each property goes in gcloud's own CLOUDSDK_<SECTION>_<PROPERTY> variable, which it
    reads as it reads `gcloud config set` (each of those is a half-second start-up).
    """
    env = {**os.environ, "CLOUDSDK_CONFIG": str(directory), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    settings = {"auth/disable_credentials": "true", "core/project": project}
    settings.update({f"api_endpoint_overrides/{api}": url for api, url in overrides.items()})
    for key, value in settings.items():
        env["CLOUDSDK_" + key.replace("/", "_").upper()] = value
    return env


def readme_block(containing: str) -> str:
    """The one shell block of the README or a docs/ page with the given text, as pasted."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = [
        block
        for page in pages
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.DOTALL)
    ]
    matching = [block for block in blocks if containing in block]
    assert len(matching) == 1, f"expected one README or docs/ sh block with {containing!r}"
    return matching[0]


def decoded_scheduler_body(job: dict) -> dict:
    return json.loads(base64.b64decode(job["httpTarget"]["body"]))


# --- Google's Python Flex Template launcher, as it runs the entry file ---------------------

IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/dataflow/image-embeddings:test"


def launcher_argv(job_name: str, template_location: str, parameters: dict[str, str]) -> list[str]:
    """The command line the launcher gives FLEX_TEMPLATE_PYTHON_PY_FILE.

    Its own flags first (from the launch request's environment), then the template
    parameters as --name=value; it writes the job description to template_location.
    """
    launcher_flags = {
        "runner": "DataflowRunner",
        "project": PROJECT,
        "region": REGION,
        "job_name": job_name,
        "temp_location": f"gs://{BUCKET}/temp",
        "staging_location": f"gs://{BUCKET}/staging",
        "template_location": template_location,
        "service_account_email": SERVICE_ACCOUNT,
    }
    flags = {**launcher_flags, **parameters}
    return ["templates/main.py", *(f"--{name}={value}" for name, value in flags.items())]


def launcher_environment(emulator: str, metadata: str) -> dict[str, str]:
    """The image's environment (Dockerfile ENV lines), with Google's APIs on loopback."""
    return {
        **os.environ,
        "FLEX_TEMPLATE_PYTHON_PY_FILE": "/template/main.py",
        "PIPELINE_CONTAINER_IMAGE": IMAGE,
        "KERAS_HOME": "/opt/keras",
        "PIPELINE_PRESETS": "/opt/presets",
        "STORAGE_EMULATOR_HOST": emulator,
        **metadata_environment(metadata),
    }


def imported_packages(importtime_log: str) -> set[str]:
    """Top-level packages a `python -X importtime` run imported, from its stderr."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import time:")
    }


# --- A GCS JSON API emulator ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def storage_emulator(bucket: str):
    """gcp-storage-emulator on loopback with one bucket; yields its STORAGE_EMULATOR_HOST."""
    port = free_port()
    command = [
        os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator"),
        "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
        "--default-bucket", bucket,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("the GCS emulator did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def emulator_client(emulator: str):
    """A google-cloud-storage client of the emulator, without credentials."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator},
    )


class FaultyProxy(LoopbackServer):
    """Forwards HTTP to upstream, but answers every `every`-th request 503 or 429, or
    hangs up, in turn.

    A schedule rather than chance: every kind of fault happens in a run of 3 x every
    requests, and a retried request is never the next one faulted, so the faults cost
    one retry each; `injected` counts what was done.
    """

    FAULTS = ("503", "429", "dropped")

    def __init__(self, upstream: str, every: int = 20):
        import http.client
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        lock = threading.Lock()
        self.injected = {"503": 0, "429": 0, "dropped": 0, "forwarded": 0}
        injected = self.injected
        requests = itertools.count(1)
        faults = self.FAULTS

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    number = next(requests)
                kind = faults[(number // every) % len(faults)] if number % every == 0 else None
                if kind in ("503", "429"):
                    with lock:
                        injected[kind] += 1
                    payload = json.dumps({"error": {"code": int(kind), "message": "injected"}})
                    self.reply(int(kind), payload.encode(), {"Content-Type": "application/json"})
                    return
                if kind == "dropped":
                    with lock:
                        injected["dropped"] += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                with lock:
                    injected["forwarded"] += 1
                passed = [
                    (key, value)
                    for key, value in response.getheaders()
                    if key.lower() not in ("transfer-encoding", "connection", "content-length")
                ]
                self.reply(response.status, data, passed)
                connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        # A hung-up connection makes the handler's last flush fail; that is the point.
        self.url = f"http://127.0.0.1:{self._start(Handler, quiet_errors=True)}"


_NOT_MET = "At least one of the pre-conditions you specified did not hold."
_CONDITION_NOT_MET = json.dumps(
    {"error": {"code": 412, "message": _NOT_MET, "errors": [{"reason": "conditionNotMet"}]}}
).encode()


class PreconditionProxy(LoopbackServer):
    """Forwards HTTP to a GCS emulator, enforcing ifGenerationMatch as Cloud Storage does.

    gcp-storage-emulator ignores generation preconditions: a second upload with
    ifGenerationMatch=0 replaces the object, a delete with a wrong generation deletes
    it. This proxy answers such requests 412, as Cloud Storage would; requests that
    change objects pass one at a time, so a check and its write are one step. It
    knows multipart uploads (the object name in their metadata part) and DELETE and
    PATCH of an object; `refused` counts its 412s.
    """

    def __init__(self, upstream: str):
        import http.client
        from urllib.parse import parse_qs, quote, unquote, urlsplit

        target = urlsplit(upstream)
        lock = threading.Lock()
        self.refused = 0
        proxy = self

        def send(method: str, path: str, body: bytes | None, headers: dict):
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read(), response.getheaders()
            finally:
                connection.close()

        def object_of(method: str, path: str, body: bytes | None) -> tuple[str, str] | None:
            upload = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path)
            if upload and method == "POST":
                # The metadata part: one line of JSON between the part's headers and data.
                parts = [line for line in (body or b"").splitlines() if line.startswith(b"{")]
                return (upload.group(1), json.loads(parts[0])["name"]) if parts else None
            named = re.fullmatch(r"/storage/v1/b/([^/]+)/o/([^/]+)", path)
            if named and method in ("DELETE", "PATCH"):
                return named.group(1), unquote(named.group(2))
            return None

        def generation(bucket: str, name: str) -> int:
            status, data, _ = send("GET", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
                                   None, {})  # fmt: skip
            return int(json.loads(data)["generation"]) if status == 200 else 0

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, body: bytes | None):
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                status, data, answer = send(self.command, self.path, body, headers)
                passed = [
                    (key, value)
                    for key, value in answer
                    if key.lower() not in ("transfer-encoding", "connection", "content-length")
                ]
                self.reply(status, data, passed)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "GET":
                    self._forward(body)
                    return
                url = urlsplit(self.path)
                wanted = parse_qs(url.query).get("ifGenerationMatch")
                with lock:
                    target_object = object_of(self.command, url.path, body)
                    if wanted and target_object and generation(*target_object) != int(wanted[0]):
                        proxy.refused += 1
                        self.reply(412, _CONDITION_NOT_MET, {"Content-Type": "application/json"})
                        return
                    self._forward(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.url = f"http://127.0.0.1:{self._start(Handler)}"


class ForeignNamesProxy(LoopbackServer):
    """Forwards HTTP to a GCS emulator, showing object names that Cloud Storage allows
    and gcp-storage-emulator refuses or drops (a `..` or `.` segment).

    An object uploaded to the emulator with a placeholder segment (a key of `shown`) is
    seen through this proxy with the segment it stands for, as Cloud Storage would list
    and serve it: in the JSON of listings and metadata (name, id, selfLink, mediaLink), and
    by name in requests (the object's path, a listing's prefix).
    """

    def __init__(self, upstream: str, shown: dict[str, str]):
        import http.client
        from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

        # An empty segment could not be told from a prefix's trailing slash.
        assert all(shown.values()), "each shown segment is a non-empty name"
        target = urlsplit(upstream)
        stored = {segment: placeholder for placeholder, segment in shown.items()}
        proxy = self

        def rename(name: str, names: dict[str, str]) -> str:
            return "/".join(names.get(segment, segment) for segment in name.split("/"))

        def upstream_path(path: str) -> str:
            url = urlsplit(path)
            named = re.fullmatch(r"(/(?:download/)?storage/v1/b/[^/]+/o/)(.+)", url.path)
            route = url.path
            if named:
                route = named.group(1) + quote(rename(unquote(named.group(2)), stored), safe="")
            query = [
                (key, rename(value, stored) if key == "prefix" else value)
                for key, value in parse_qsl(url.query, keep_blank_values=True)
            ]
            return route + (f"?{urlencode(query)}" if query else "")

        def as_shown(resource: dict) -> dict:
            if resource.get("kind") != "storage#object":
                return resource
            name = rename(resource["name"], shown)
            bucket, generation = resource["bucket"], resource["generation"]
            quoted = quote(name, safe="")
            return {
                **resource,
                "name": name,
                "id": f"{bucket}/{name}/{generation}",
                "selfLink": f"{proxy.url}/storage/v1/b/{bucket}/o/{quoted}",
                "mediaLink": f"{proxy.url}/download/storage/v1/b/{bucket}/o/{quoted}"
                f"?generation={generation}&alt=media",
            }

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def handle(self):
                # A client process that exits resets its kept-alive connections: not a fault.
                with contextlib.suppress(ConnectionError):
                    super().handle()

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    connection.request(self.command, upstream_path(self.path), body, headers)
                    response = connection.getresponse()
                    data = response.read()
                    answer = response.getheaders()
                finally:
                    connection.close()
                media = self.path.startswith("/download/") or "alt=media" in self.path
                json_answer = response.getheader("Content-Type", "").startswith("application/json")
                if data and json_answer and not media:  # an object's own bytes pass as they are
                    value = json.loads(data)
                    if isinstance(value.get("items"), list):
                        value["items"] = [as_shown(item) for item in value["items"]]
                    data = json.dumps(as_shown(value)).encode()
                passed = [
                    (key, value)
                    for key, value in answer
                    if key.lower() not in ("transfer-encoding", "connection", "content-length")
                ]
                self.reply(response.status, data, passed)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.url = f"http://127.0.0.1:{self._start(Handler)}"
