"""Vertex AI Vector Search's batch input format, as Google publishes it, as a checker.

https://cloud.google.com/vertex-ai/docs/vector-search/setup/format-structure:
data files directly in the folder, named *.csv, *.json or *.avro, at most 5000 of them;
`delete/` the only subfolder; JSON files UTF-8, each line one JSON object with an `id`,
an `embedding` of `dimensions` numbers, optional `restricts` (`namespace`, `allow`,
`deny` lists of strings), `numeric_restricts` and a string `crowding_tag`; an id at
most once in a batch.
"""

from __future__ import annotations

import json

MAX_FILES = 5000
FIELDS = {"id", "embedding", "sparse_embedding", "restricts", "numeric_restricts", "crowding_tag"}
RESTRICT_FIELDS = {"namespace", "allow", "deny"}


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_datapoint(point, dimensions: int) -> None:
    assert isinstance(point, dict), point
    assert set(point) <= FIELDS, set(point) - FIELDS
    assert isinstance(point["id"], str) and point["id"], point.get("id")
    embedding = point["embedding"]
    assert isinstance(embedding, list) and len(embedding) == dimensions
    assert all(_is_number(value) for value in embedding)
    for restrict in point.get("restricts", []):
        assert set(restrict) <= RESTRICT_FIELDS and isinstance(restrict["namespace"], str)
        for key in ("allow", "deny"):
            values = restrict.get(key, [])
            assert isinstance(values, list) and all(isinstance(v, str) for v in values)
    if "crowding_tag" in point:
        assert isinstance(point["crowding_tag"], str)


def check_vector_search_folder(files: dict[str, bytes], folder: str, dimensions: int) -> dict:
    """files: every file under folder (name -> bytes). Returns the datapoints by id."""
    folder = folder.rstrip("/") + "/"
    data = {}
    for name, content in files.items():
        assert name.startswith(folder), name
        relative = name[len(folder) :]
        if relative.startswith("delete/"):
            assert "/" not in relative[len("delete/") :], name
            continue
        assert "/" not in relative, f"{name}: Vector Search allows no subfolder but delete/"
        assert relative.endswith(".json"), f"{name}: not a data file name"
        data[relative] = content
    assert 0 < len(data) <= MAX_FILES
    points = {}
    for content in data.values():
        for line in content.decode("utf-8").splitlines():
            point = json.loads(line)
            check_datapoint(point, dimensions)
            assert point["id"] not in points, f"id {point['id']} twice in one batch"
            points[point["id"]] = point
    return points
