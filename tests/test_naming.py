"""Per-image output names: deterministic, collision-free, flat."""

from __future__ import annotations

import hashlib

from pipeline.outputs.naming import npy_name, run_temp_folder, spill_prefix


def test_same_base_names_in_different_folders_do_not_collide():
    names = {
        npy_name(uri)
        for uri in (
            "gs://b/a/cat.jpg",
            "gs://b/b/cat.jpg",
            "/data/a/cat.jpg",
            "img.v1.jpg",
            "img.v2.jpg",
            "img.v1.png",
        )
    }
    assert len(names) == 6


def test_names_are_deterministic_and_readable():
    uri = "gs://bucket/photos/2024/cat.jpg"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:24]
    assert npy_name(uri) == f"cat.jpg.{digest}.npy"
    assert npy_name(uri) == npy_name(uri)


def test_names_never_hold_a_path_or_hidden_name():
    for uri in (
        "gs://b/../../etc/passwd",
        "/x/..",
        "gs://b/dir/",
        "a b/ü日本.jpg",
        "..",
        "/.hidden",
    ):
        name = npy_name(uri)
        assert "/" not in name and not name.startswith(".") and name.endswith(".npy"), name


def test_hostile_uris_map_to_distinct_names_inside_the_output():
    uris = [
        "gs://b/../../escape.jpg",
        "gs://b/a%2F..%2F..%2Fescape.jpg",
        "/etc/passwd",
        "//double/leading.jpg",
        "gs://b/ünïcödé 写真.jpg",
        "gs://b/with space.jpg",
        "gs://b/hash#fragment.jpg",
        "gs://b/query?x=1.jpg",
        "gs://b/..",
        "gs://b/.",
    ]
    names = [npy_name(uri) for uri in uris]
    assert len(set(names)) == len(uris)
    for name in names:
        assert "/" not in name and "\\" not in name and name not in (".", "..")
        assert not name.startswith(".") and name.isascii() and " " not in name
        assert name.endswith(".npy")


def test_working_files_go_under_temp_location_where_there_is_one():
    run_id = "20261124T011106-3fa2c1"
    assert run_temp_folder("gs://t/tmp", "gs://b/out", run_id) == (
        f"gs://t/tmp/image-embeddings/{run_id}"
    )
    assert run_temp_folder(None, "gs://b/out", run_id) == f"gs://b/out/_runs/{run_id}"
    assert (
        spill_prefix(run_temp_folder(None, "/o", run_id)) == f"/o/_runs/{run_id}/similarity/spill"
    )
