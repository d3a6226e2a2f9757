"""A BigQuery API stand-in on loopback, held to BigQuery's own v2 discovery document.

No BigQuery emulator runs here and loads Parquet (see docs/testing.md,
"Destinations"), so this server answers the calls the pipeline and the tests make: datasets,
tables (read, and their description patched) and tabledata reads, load jobs from gs://
Parquet files (read from the GCS emulator, with BigQuery's documented type mapping and
list inference, and the destination table's description as jobs.insert documents it),
the two statements the pipeline runs (CREATE VECTOR INDEX, TRUNCATE TABLE), and
search-images' VECTOR_SEARCH (cosine distance over the stored rows, the query vector
read from the request's parameter). A test
can make the next jobs fail as a transient backend error would. Every request is
checked against the discovery document (method, path, query parameters, body fields,
types, enums) and so is every answer it gives; a request that fails the check gets a
400 and is kept in `invalid`, which tests assert is empty.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import threading
import time
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from cloud import LoopbackServer, QuietHandler, discovery_document, emulator_client, schema_errors

SERVICE_PATH = "/bigquery/v2/"
LOCATION = "US"
_PARQUET_TYPES = {
    pa.string(): "STRING",
    pa.large_string(): "STRING",
    pa.int32(): "INTEGER",
    pa.int64(): "INTEGER",
    pa.float32(): "FLOAT",
    pa.float64(): "FLOAT",
    pa.bool_(): "BOOLEAN",
}
_VECTOR_INDEX = re.compile(
    r"CREATE VECTOR INDEX IF NOT EXISTS (?P<name>\w+) ON `(?P<table>[^`]+)`\((?P<column>\w+)\) "
    r"OPTIONS\(index_type = '(?P<type>\w+)', distance_type = '(?P<distance>\w+)'\)"
)
_TRUNCATE = re.compile(r"TRUNCATE TABLE `(?P<table>[^`]+)`")
# search-images' statement (pipeline/search/bigquery.py): the k nearest rows by cosine
# distance to the query parameter, as VECTOR_SEARCH returns them
# (cloud.google.com/bigquery/docs/reference/standard-sql/search_functions#vector_search).
_VECTOR_SEARCH = re.compile(
    r"SELECT base\.uri AS uri, 1 - distance AS similarity(?P<kept>(, base\.`\w+` AS `\w+`)*) "
    r"FROM VECTOR_SEARCH\(TABLE `(?P<table>[^`]+)`, '(?P<column>\w+)', "
    r"\(SELECT @(?P<parameter>\w+) AS (?P<query_column>\w+)\), top_k => (?P<k>[1-9][0-9]*), "
    r"distance_type => 'COSINE'\) ORDER BY similarity DESC, uri"
)
_KEPT = re.compile(r", base\.`(\w+)` AS `(\w+)`")
# Query parameters the official client sends that the discovery document does not list
# for that method (google-cloud-bigquery's get_job asks for projection=full).
_CLIENT_EXTRAS = {("bigquery.jobs.get", "projection")}


class BigQueryError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _methods(document: dict) -> list[tuple[str, re.Pattern, dict]]:
    """(HTTP method, path regex, method description) for every method of the API."""
    found = []

    def visit(resources: dict) -> None:
        for resource in resources.values():
            for method in resource.get("methods", {}).values():
                pattern = re.sub(r"\{\+?(\w+)\}", r"(?P<\1>[^/]+)", method["path"])
                found.append((method["httpMethod"], re.compile(pattern + "$"), method))
            visit(resource.get("resources", {}))

    visit(document["resources"])
    return found


def column_schema(field: pa.Field, list_inference: bool) -> dict:
    """A Parquet column as BigQuery's load maps it (loading-data-cloud-storage-parquet)."""
    kind = field.type
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        element = _PARQUET_TYPES[kind.value_type]
        if list_inference:
            return {"name": field.name, "type": element, "mode": "REPEATED"}
        # Without inference the LIST's own nodes become a record: list.element.
        inner = {"name": "element", "type": element, "mode": "NULLABLE"}
        wrapper = {"name": "list", "type": "RECORD", "mode": "REPEATED", "fields": [inner]}
        return {"name": field.name, "type": "RECORD", "mode": "NULLABLE", "fields": [wrapper]}
    return {"name": field.name, "type": _PARQUET_TYPES[kind], "mode": "NULLABLE"}


def _field_bytes(value, field: dict) -> int:
    """Logical bytes of a value, as BigQuery sizes its data types."""
    if value is None:
        return 0
    if field.get("mode") == "REPEATED":
        return sum(_field_bytes(item, {**field, "mode": "NULLABLE"}) for item in value)
    if field["type"] == "STRING":
        return 2 + len(value.encode())
    if field["type"] == "RECORD":
        return sum(_field_bytes(value.get(f["name"]), f) for f in field["fields"])
    if field["type"] == "BOOLEAN":
        return 1
    return 8


def _cell(value, field: dict):
    """A value in tabledata.list's f/v form."""
    if value is None:
        return None
    if field.get("mode") == "REPEATED":
        return [{"v": _cell(item, {**field, "mode": "NULLABLE"})} for item in value]
    if field["type"] == "RECORD":
        return {"f": [{"v": _cell(value.get(f["name"]), f)} for f in field["fields"]]}
    if field["type"] == "FLOAT":
        return repr(float(value))
    if field["type"] == "BOOLEAN":
        return "true" if value else "false"
    return str(value)


class BigQueryStandIn(LoopbackServer):
    """Datasets given at start; tables, rows and jobs kept in memory."""

    def __init__(self, project: str, datasets: list[str], storage_emulator: str):
        self.document = discovery_document("bigquery.v2")
        self.project = project
        self.datasets = set(datasets)
        self.tables: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.vector_indexes: dict[str, dict] = {}
        self.results: dict[str, tuple[list[dict], list[dict]]] = {}  # job id: schema, rows
        self.searches: list[dict] = []  # each VECTOR_SEARCH statement and its parameters
        self.requests: list[tuple[str, str]] = []
        self.invalid: list[str] = []
        self.fail_loads_with: str | None = None
        self._failing: dict[str, list[str]] = {"load": [], "query": []}
        self._storage = emulator_client(storage_emulator)
        self._methods = _methods(self.document)
        self._lock = threading.Lock()
        stand_in = self

        class Handler(QuietHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = stand_in.answer(self.command, self.path, body)
                payload = json.dumps(answer).encode()
                self.reply(status, payload, {"Content-Type": "application/json"})

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.address = f"http://127.0.0.1:{self._start(Handler)}"

    def fail_next(self, kind: str, message: str) -> None:
        """The next job of that kind ("load" or "query") ends DONE with a backendError,
        changing nothing, as a job does that BigQuery's backend gives up on."""
        with self._lock:
            self._failing[kind].append(message)

    # --- requests, checked against the discovery document -----------------------------

    def answer(self, verb: str, raw_path: str, body: bytes) -> tuple[int, dict]:
        url = urlsplit(raw_path)
        with self._lock:
            self.requests.append((verb, url.path))
        if not url.path.startswith(SERVICE_PATH):
            return self._invalid(f"{verb} {url.path}: not under {SERVICE_PATH}")
        path = url.path[len(SERVICE_PATH) :]
        for http_method, pattern, candidate in self._methods:
            matched = pattern.match(path)
            if http_method == verb and matched:
                method = candidate
                break
        else:
            return self._invalid(f"{verb} {path}: no such method in bigquery.v2")
        parameters = {**self.document["parameters"], **method.get("parameters", {})}
        for name, _ in parse_qsl(url.query):
            known = parameters.get(name, {}).get("location") == "query"
            if not known and (method["id"], name) not in _CLIENT_EXTRAS:
                return self._invalid(f"{method['id']}: unknown query parameter {name!r}")
        request = json.loads(body) if body else None
        if method["id"] == "bigquery.jobs.insert":
            _client_float_parameters(request)
        if "request" in method:
            errors = schema_errors(request, method["request"]["$ref"], self.document)
            if errors:
                return self._invalid(f"{method['id']}: {errors}")
        query = dict(parse_qsl(url.query))
        try:
            with self._lock:
                status, response = self._serve(method["id"], matched.groupdict(), query, request)
        except BigQueryError as error:
            code = {"notFound": 404, "duplicate": 409}.get(error.reason, 400)
            return code, _error(code, error.reason, error.message)
        if "response" in method:
            errors = schema_errors(response, method["response"]["$ref"], self.document)
            assert not errors, f"the stand-in's own answer breaks the schema: {errors}"
        return status, response

    def _invalid(self, message: str) -> tuple[int, dict]:
        with self._lock:
            self.invalid.append(message)
        return 400, _error(400, "invalid", message)

    def _serve(self, method_id: str, path: dict, query: dict, request) -> tuple[int, dict]:
        if method_id == "bigquery.datasets.get":
            return 200, self._dataset(path["projectId"], path["datasetId"])
        if method_id == "bigquery.tables.get":
            table_id = f"{path['projectId']}.{path['datasetId']}.{path['tableId']}"
            return 200, self._table_resource(self._table(table_id))
        if method_id == "bigquery.tables.patch":
            table_id = f"{path['projectId']}.{path['datasetId']}.{path['tableId']}"
            return 200, self._patch_table(self._table(table_id), request)
        if method_id == "bigquery.tabledata.list":
            table_id = f"{path['projectId']}.{path['datasetId']}.{path['tableId']}"
            return 200, self._rows(self._table(table_id), query)
        if method_id == "bigquery.jobs.insert":
            return 200, self._insert_job(path["projectId"], request)
        if method_id == "bigquery.jobs.get":
            return 200, self._job(path["jobId"], query.get("location"))
        if method_id == "bigquery.jobs.getQueryResults":
            job = self._job(path["jobId"], query.get("location"))
            if path["jobId"] in self.results:
                return 200, self._query_results(job, self.results[path["jobId"]], query)
            return 200, {
                "kind": "bigquery#getQueryResultsResponse",
                "jobReference": job["jobReference"],
                "jobComplete": True,
                "totalRows": "0",
                "schema": {"fields": []},
            }
        raise BigQueryError("invalid", f"the stand-in does not serve {method_id}")

    # --- resources -----------------------------------------------------------------------

    def _dataset(self, project: str, dataset: str) -> dict:
        if f"{project}.{dataset}" not in self.datasets:
            raise BigQueryError("notFound", f"Not found: Dataset {project}:{dataset}")
        return {
            "kind": "bigquery#dataset",
            "id": f"{project}:{dataset}",
            "datasetReference": {"projectId": project, "datasetId": dataset},
            "location": LOCATION,
        }

    def _table(self, table_id: str) -> dict:
        project, dataset, _ = table_id.split(".")
        self._dataset(project, dataset)
        if table_id not in self.tables:
            raise BigQueryError("notFound", f"Not found: Table {table_id}")
        return self.tables[table_id]

    def _table_resource(self, table: dict) -> dict:
        project, dataset, name = table["id"].split(".")
        size = sum(_field_bytes(row.get(f["name"]), f) for row in table["rows"]
                   for f in table["schema"])  # fmt: skip
        described = {"description": table["description"]} if "description" in table else {}
        return {
            "kind": "bigquery#table",
            "id": f"{project}:{dataset}.{name}",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": name},
            "schema": {"fields": table["schema"]},
            "numRows": str(len(table["rows"])),
            "numBytes": str(size),
            "type": "TABLE",
            "location": LOCATION,
            **described,
        }

    def _patch_table(self, table: dict, patch: dict) -> dict:
        """tables.patch of the description, the one field the pipeline changes."""
        unserved = set(patch) - {"description", "tableReference"}
        if unserved:
            raise BigQueryError("invalid", f"the stand-in does not patch {sorted(unserved)}")
        if "description" in patch:
            table["description"] = patch["description"]
        return self._table_resource(table)

    def _rows(self, table: dict, query: dict) -> dict:
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        count = int(query.get("maxResults") or 1000)
        page = table["rows"][start : start + count]
        answer = {
            "kind": "bigquery#tableDataList",
            "totalRows": str(len(table["rows"])),
            "rows": [
                {"f": [{"v": _cell(row.get(f["name"]), f)} for f in table["schema"]]}
                for row in page
            ],
        }
        if start + count < len(table["rows"]):
            answer["pageToken"] = str(start + count)
        return answer

    # --- jobs ------------------------------------------------------------------------------

    def _job(self, job_id: str, location: str | None) -> dict:
        """A job is found only in its own location (or when none is given)."""
        job = self.jobs.get(job_id)
        if job is None or location not in (None, job["jobReference"]["location"]):
            raise BigQueryError("notFound", f"Not found: Job {self.project}:{location}.{job_id}")
        return job

    def _insert_job(self, project: str, job: dict) -> dict:
        reference = job.get("jobReference") or {}
        job_id = reference.get("jobId") or f"job_{len(self.jobs)}"
        location = reference.get("location") or LOCATION
        if job_id in self.jobs:
            raise BigQueryError("duplicate", f"Already Exists: Job {project}:{LOCATION}.{job_id}")
        configuration = job["configuration"]
        try:
            kind = "load" if "load" in configuration else "query"
            if self._failing.get(kind) and kind in configuration:
                raise BigQueryError("backendError", self._failing[kind].pop(0))
            if "load" in configuration:
                statistics = {"load": self._load(configuration["load"])}
            elif "query" in configuration:
                results = self._query(configuration["query"]["query"], configuration["query"])
                kind_of = "SELECT" if results is not None else "DDL"
                statistics = {"query": {"statementType": kind_of}}
                if results is not None:
                    self.results[job_id] = results
            else:
                raise BigQueryError("invalid", "the stand-in runs load and query jobs only")
            status = {"state": "DONE"}
        except BigQueryError as error:
            result = {"reason": error.reason, "message": error.message}
            statistics, status = {}, {"state": "DONE", "errorResult": result, "errors": [result]}
        now = str(int(time.time() * 1000))
        self.jobs[job_id] = {
            "kind": "bigquery#job",
            "id": f"{project}:{location}.{job_id}",
            "jobReference": {"projectId": project, "jobId": job_id, "location": location},
            "configuration": configuration,
            "status": status,
            "statistics": {"creationTime": now, "startTime": now, "endTime": now, **statistics},
        }
        return self.jobs[job_id]

    def _load(self, load: dict) -> dict:
        if load.get("sourceFormat") != "PARQUET":
            raise BigQueryError("invalid", "the stand-in loads Parquet only")
        if self.fail_loads_with:
            raise BigQueryError("invalid", self.fail_loads_with)
        destination = load["destinationTable"]
        table_id = ".".join(destination[k] for k in ("projectId", "datasetId", "tableId"))
        list_inference = bool(load.get("parquetOptions", {}).get("enableListInference"))
        tables = [
            self._read_parquet(path) for uri in load["sourceUris"] for path in self._match(uri)
        ]
        if not tables:
            raise BigQueryError("notFound", f"Not found: URI {load['sourceUris'][0]}")
        schemas = {json.dumps([column_schema(f, list_inference) for f in t.schema]) for t in tables}
        if len(schemas) > 1:
            raise BigQueryError("invalid", "Error while reading data: the files' schemas differ")
        schema = json.loads(schemas.pop())
        rows = [row for t in tables for row in t.to_pylist()]
        if not list_inference:
            for row in rows:
                for field in schema:
                    if field["type"] == "RECORD" and row[field["name"]] is not None:
                        row[field["name"]] = {"list": [{"element": v} for v in row[field["name"]]]}
        write = load.get("writeDisposition", "WRITE_APPEND")
        existing = self.tables.get(table_id)
        project, dataset, _ = table_id.split(".")
        self._dataset(project, dataset)
        # DestinationTableProperties: the description "will only be used if the destination
        # table is newly created. If the table already exists and a value different than
        # the current description is provided, the job will fail."
        properties = load.get("destinationTableProperties", {})
        if existing is None:
            if load.get("createDisposition") == "CREATE_NEVER":
                raise BigQueryError("notFound", f"Not found: Table {table_id}")
            existing = {"id": table_id, "schema": schema, "rows": []}
            if "description" in properties:
                existing["description"] = properties["description"]
            self.tables[table_id] = existing
        elif properties.get("description", existing.get("description")) != existing.get(
            "description"
        ):
            raise BigQueryError(
                "invalid", f"Provided description does not match the description of {table_id}."
            )
        if write == "WRITE_TRUNCATE":
            existing.update(schema=schema, rows=rows)
        elif write == "WRITE_APPEND":
            if existing["schema"] != schema:
                raise BigQueryError("invalid", f"Provided Schema does not match Table {table_id}.")
            existing["rows"] += rows
        else:
            raise BigQueryError("invalid", f"the stand-in does not do {write}")
        return {"inputFiles": str(len(tables)), "outputRows": str(len(rows))}

    def _match(self, uri: str) -> list[str]:
        bucket, _, name = uri[len("gs://") :].partition("/")
        if "*" not in name:
            return [uri]
        listed = self._storage.list_blobs(bucket, prefix=name.split("*")[0])
        return [f"gs://{bucket}/{blob.name}" for blob in listed if fnmatch.fnmatch(blob.name, name)]

    def _read_parquet(self, uri: str) -> pa.Table:
        bucket, _, name = uri[len("gs://") :].partition("/")
        blob = self._storage.bucket(bucket).blob(name)
        if not blob.exists():
            raise BigQueryError("notFound", f"Not found: URI {uri}")
        return pq.read_table(io.BytesIO(blob.download_as_bytes()))

    def _query_results(self, job: dict, results: tuple[list[dict], list[dict]], query: dict):
        """A SELECT's rows, a page at a time (maxResults, pageToken or startIndex)."""
        schema, rows = results
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        count = int(query["maxResults"]) if "maxResults" in query else len(rows)
        page = rows[start : start + count]
        answer = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": job["jobReference"],
            "jobComplete": True,
            "totalRows": str(len(rows)),
            "schema": {"fields": schema},
            "rows": [{"f": [{"v": _cell(row[f["name"]], f)} for f in schema]} for row in page],
        }
        if start + count < len(rows):
            answer["pageToken"] = str(start + count)
        return answer

    def _vector_search(self, found: re.Match, configuration: dict):
        """The statement's answer: cosine distance (1 - cos) over the stored rows, the
        query vector read from the request's ARRAY<FLOAT64> parameter, k nearest."""
        import numpy as np

        table = self._table(found["table"])
        if found["query_column"] != found["column"]:
            raise BigQueryError("invalidQuery", "the query column must be the searched one")
        parameters = {p["name"]: p for p in configuration.get("queryParameters", [])}
        parameter = parameters.get(found["parameter"])
        if configuration.get("useLegacySql", True) or parameter is None:
            raise BigQueryError("invalidQuery", f"Query parameter '{found['parameter']}' not found")
        declared = parameter["parameterType"]
        if declared != {"type": "ARRAY", "arrayType": {"type": "FLOAT64"}}:
            raise BigQueryError("invalidQuery", f"@{found['parameter']} is {declared}")
        vector = np.array([float(v["value"]) for v in parameter["parameterValue"]["arrayValues"]])
        fields = {f["name"]: f for f in table["schema"]}
        column = fields.get(found["column"])
        if not column or (column["type"], column.get("mode")) != ("FLOAT", "REPEATED"):
            raise BigQueryError("invalidQuery", f"{found['column']} is not ARRAY<FLOAT64>")
        kept = [name for name, alias in _KEPT.findall(found["kept"]) if name == alias]
        if len(kept) != len(_KEPT.findall(found["kept"])) or not set(kept) <= set(fields):
            raise BigQueryError("invalidQuery", f"Unrecognized name in {found['kept']}")
        self.searches.append({"statement": found.string, "configuration": configuration})
        scored = []
        for row in table["rows"]:
            stored = np.array(row[found["column"]], dtype=np.float64)
            if len(stored) != len(vector):
                raise BigQueryError("invalidQuery", "vectors of different lengths")
            cosine = stored @ vector / (np.linalg.norm(stored) * np.linalg.norm(vector))
            scored.append((float(1 - cosine), row))
        nearest = sorted(scored, key=lambda item: item[0])[: int(found["k"])]
        schema = [
            {"name": "uri", "type": "STRING", "mode": "NULLABLE"},
            {"name": "similarity", "type": "FLOAT", "mode": "NULLABLE"},
            *({**fields[name], "mode": "NULLABLE"} for name in kept),
        ]
        rows = [
            {"uri": row["uri"], "similarity": 1 - distance, **{n: row[n] for n in kept}}
            for distance, row in nearest
        ]
        rows.sort(key=lambda row: (-row["similarity"], row["uri"]))
        return schema, rows

    def _query(self, statement: str, configuration: dict | None = None):
        """Runs a statement; a SELECT's (schema, rows), None for the others."""
        flat = " ".join(statement.split())
        search = _VECTOR_SEARCH.fullmatch(flat)
        if search:
            return self._vector_search(search, configuration or {})
        index = _VECTOR_INDEX.fullmatch(statement.strip())
        truncate = _TRUNCATE.fullmatch(statement.strip())
        if index:
            table = self._table(index["table"])
            column = next((f for f in table["schema"] if f["name"] == index["column"]), None)
            if not column or (column["type"], column.get("mode")) != ("FLOAT", "REPEATED"):
                raise BigQueryError(
                    "invalidQuery", f"Column {index['column']} must be of type ARRAY<FLOAT64>"
                )
            self.vector_indexes.setdefault(index["table"], index.groupdict())
        elif truncate:
            self._table(truncate["table"])["rows"] = []
        else:
            raise BigQueryError("invalidQuery", f"the stand-in does not run: {statement}")
        return None


def _client_float_parameters(job: dict | None) -> None:
    """google-cloud-bigquery sends FLOAT64 query parameter values as JSON numbers
    (_helpers._float_to_json), where the discovery document types
    QueryParameterValue.value as a string; the service takes both. Each such number is
    made the string it stands for before the check, so that all else is still checked."""
    query = ((job or {}).get("configuration") or {}).get("query") or {}
    for parameter in query.get("queryParameters") or []:
        value = parameter.get("parameterValue") or {}
        for item in [value, *(value.get("arrayValues") or [])]:
            if isinstance(item.get("value"), float):
                item["value"] = repr(item["value"])


def _error(code: int, reason: str, message: str) -> dict:
    return {"error": {"code": code, "message": message,
                      "errors": [{"reason": reason, "message": message}]}}  # fmt: skip
