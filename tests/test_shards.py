"""WebDataset shards as input: shards that the webdataset package writes, read a member at
a time; each image member embeds as the same file read from disk does, sibling members are
kept as columns, and every member of a cut, corrupt or missing shard is accounted for."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset
from apache_beam import pvalue
from cloud import MetadataServer, emulator_client, storage_emulator
from forked import run_module
from support import (
    REPO,
    dead_letter,
    parquet_embeddings,
    read_parquet,
    run_cli,
    summary,
    write_csv,
)

from pipeline import dry_run
from pipeline.common import FAILED
from pipeline.inputs import (
    Decoding,
    InputError,
    Resize,
    count_inputs,
    first_uris,
    keep_columns_layout,
)
from pipeline.inputs.shards import (
    MEMBER_REPEATS,
    MEMBER_ROWS,
    OpenShardsFn,
    ShardImage,
    ShardReadError,
    image_uris,
    read_member,
    read_members,
    stream_members,
)
from pipeline.inputs.sources import lists_shards
from pipeline.inputs.uris import ImageTooLargeError, is_shard, member_uri, split_member

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
# Small photographs: what is proven here does not depend on their size.
SMALL = ["horse.png", "coins.png", "brick.png", "rocket.jpg"]


def photo_bytes(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def write_shard(path: Path, samples: list[dict]) -> Path:
    """A shard as WebDataset's own writer writes it (members in sample order)."""
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def captioned(key: str, name: str) -> dict:
    """A sample of one photograph, a caption and a JSON record."""
    extension = name.rsplit(".", 1)[1]
    return {
        "__key__": key,
        extension: photo_bytes(name),
        "txt": f"a photo of {name}",
        "json": f'{{"source": "{name}"}}',
    }


def offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Each member's header offset and data offset in the shard."""
    with tarfile.open(path) as archive:
        return {info.name: (info.offset, info.offset_data) for info in archive}


def cut(path: Path, at: int, to: Path) -> Path:
    to.write_bytes(path.read_bytes()[:at])
    return to


# --- Names ----------------------------------------------------------------------------------


def test_a_member_uri_names_its_shard_and_member():
    assert split_member("gs://b/s/00001.tar#0007.jpg") == ("gs://b/s/00001.tar", "0007.jpg")
    assert split_member("/d/a.TAR#x/y.seg.png") == ("/d/a.TAR", "x/y.seg.png")
    assert split_member("/d/a.tar.gz#k.jpg") == ("/d/a.tar.gz", "k.jpg")
    assert split_member("/d/a.tar#k#2.jpg") == ("/d/a.tar", "k#2.jpg")
    assert split_member("/d/photo#1.jpg") is None
    assert split_member("/d/a.tar#") is None
    assert member_uri("/d/a.tar", "k.jpg") == "/d/a.tar#k.jpg"
    assert is_shard("gs://b/00001.tar") and is_shard("/d/a.tgz") and is_shard("/d/A.Tar.Gz")
    assert not is_shard("/d/a.tar#k.jpg") and not is_shard("/d/a.jpg")


# --- Streaming ------------------------------------------------------------------------------


def test_a_shard_streams_its_members_and_a_cut_or_corrupt_one_says_where(tmp_path):
    names = ["horse.png", "coins.png", "rocket.jpg"]
    shard = write_shard(tmp_path / "s.tar", [captioned(f"{i:04d}", n) for i, n in enumerate(names)])
    wanted = lambda name: not name.endswith(".json")  # noqa: E731

    def members(path: Path) -> list:
        with open(path, "rb") as handle:
            return list(stream_members(handle, wanted, 10**7))

    whole = members(shard)
    assert [m.name for m in whole] == list(offsets(shard))  # as tar lists them
    assert {m.name for m in whole} == {
        f"{i:04d}.{ext}" for i, n in enumerate(names) for ext in (n[-3:], "json", "txt")
    }
    assert all(m.error is None for m in whole)
    by_name = {m.name: m for m in whole}
    assert by_name["0000.png"].data == photo_bytes("horse.png")
    assert by_name["0000.json"].data is None  # not wanted: streamed past
    assert by_name["0000.txt"].data == b"a photo of horse.png"

    at = offsets(shard)
    header, data = at["0001.png"]
    before = [name for name, (start, _) in at.items() if start < header]
    inside = members(cut(shard, data + 100, tmp_path / "inside.tar"))
    assert [m.name for m in inside] == [*before, "0001.png"]
    assert isinstance(inside[-1].error, ShardReadError) and inside[-1].data is None
    assert "inside this member" in str(inside[-1].error)

    for where, end in {"in a header": header + 200, "at a member's end": header}.items():
        ended = members(cut(shard, end, tmp_path / "ended.tar"))
        assert [m.name for m in ended[:-1]] == before, where
        assert ended[-1].name == "" and isinstance(ended[-1].error, ShardReadError), where
        assert f"after its {len(before)} members" in str(ended[-1].error), where

    corrupt = bytearray(shard.read_bytes())
    corrupt[header : header + 512] = os.urandom(512)
    garbled = tmp_path / "garbled.tar"
    garbled.write_bytes(bytes(corrupt))
    read = members(garbled)
    assert [m.name for m in read[:-1]] == before
    assert "InvalidHeaderError" in str(read[-1].error)

    zipped = tmp_path / "s.tar.gz"
    zipped.write_bytes(gzip.compress(shard.read_bytes()))
    assert [(m.name, m.data) for m in members(zipped)] == [(m.name, m.data) for m in whole]


def test_a_member_over_the_byte_limit_is_refused_unread(tmp_path):
    shard = write_shard(tmp_path / "s.tar", [captioned("a", "horse.png")])
    size = len(photo_bytes("horse.png"))
    with open(shard, "rb") as handle:
        image = {m.name: m for m in stream_members(handle, lambda name: True, size - 1)}["a.png"]
    assert image.data is None and isinstance(image.error, ImageTooLargeError)
    assert f"{size} bytes, more than --max_image_bytes {size - 1}" in str(image.error)


def test_members_are_read_by_uri_and_the_first_uris_are_the_shards_images(tmp_path):
    first = write_shard(
        tmp_path / "a.tar", [captioned(f"k{i}", n) for i, n in enumerate(SMALL[:3])]
    )
    write_shard(tmp_path / "b.tar", [captioned("k9", SMALL[3])])
    assert read_member(str(first), "k1.png", 10**7) == photo_bytes(SMALL[1])
    with pytest.raises(FileNotFoundError, match=r"has no member k5\.png"):
        read_member(str(first), "k5.png", 10**7)
    cut_shard = cut(first, offsets(first)["k1.png"][1] + 10, tmp_path / "c.tar")
    read = read_members(str(cut_shard), ["k0.png", "k2.png", "k1.png"], 10**7)
    assert read["k0.png"] == photo_bytes(SMALL[0])
    assert isinstance(read["k1.png"], ShardReadError) and isinstance(read["k2.png"], ShardReadError)
    cut_shard.unlink()

    pattern = str(tmp_path / "*.tar")
    images = [member_uri(str(first), f"k{i}.png") for i in range(3)]
    assert list(image_uris(str(first))) == images
    assert first_uris(pattern, 10) == (*images, member_uri(str(tmp_path / "b.tar"), "k9.jpg"))
    assert first_uris(pattern, 2) == tuple(images[:2])
    listing = write_csv(tmp_path / "shards.csv", [str(tmp_path / "b.tar"), str(first)])
    assert first_uris(str(listing), 2) == (member_uri(str(tmp_path / "b.tar"), "k9.jpg"), images[0])
    assert lists_shards(pattern) and lists_shards(str(listing))
    assert not lists_shards(str(write_csv(tmp_path / "photos.csv", [str(PHOTOS / SMALL[0])])))
    # How many images shards hold is known only once they are read.
    assert count_inputs(pattern, 1000) is None and count_inputs(str(listing), 1000) is None

    # A listing's own column is not a sibling's extension: refused at launch.
    captioned_listing = tmp_path / "captioned.csv"
    captioned_listing.write_text(f"uri,txt\n{first},a caption\n")
    with pytest.raises(InputError, match=r"--keep_columns txt: .* lists WebDataset shards"):
        keep_columns_layout(str(captioned_listing), ("txt",))
    assert keep_columns_layout(pattern, ("txt", "cls")).kept == ()
    assert "WebDataset shards" in dry_run.check_input(pattern)
    assert dry_run.check_input(pattern).endswith(images[0])

    decoding = Decoding(Resize(32))
    loaded = decoding.load_all([images[2], str(PHOTOS / SMALL[3]), images[0], images[0] + "x"])
    np.testing.assert_array_equal(loaded[0].pixels, decoding.load(images[2]).pixels)
    np.testing.assert_array_equal(loaded[1].pixels, decoding.load(str(PHOTOS / SMALL[3])).pixels)
    np.testing.assert_array_equal(loaded[2].pixels, decoding.load(images[0]).pixels)
    assert isinstance(loaded[3], FileNotFoundError)


# --- Rows -----------------------------------------------------------------------------------


def open_shard(fn: OpenShardsFn, uri: str, kept: tuple[str, ...] = ()):
    """OpenShardsFn's outputs for one row: rows, failures by URI, member rows, repeats."""
    rows, failures, added, repeats = [], {}, [], 0
    for output in fn.process((uri, kept)):
        if not isinstance(output, pvalue.TaggedOutput):
            rows.append(output)
        elif output.tag == FAILED:
            failures[output.value.uri] = (output.value.error_type, output.value.message)
        elif output.tag == MEMBER_ROWS:
            added.append(output.value)
        else:
            assert output.tag == MEMBER_REPEATS
            repeats += output.value
    return rows, failures, added, repeats


def test_every_member_of_a_shard_is_a_row_a_repeat_or_a_failure(tmp_path):
    samples = [
        captioned("a", "horse.png"),
        {"__key__": "b", "png": photo_bytes("coins.png"), "json": "{}"},  # no caption
        {**captioned("c", "brick.png"), "txt": b"caf\xe9"},  # a caption not UTF-8
        captioned("d", "rocket.jpg"),  # over the byte limit below
        captioned("a", "horse.png"),  # its name again
        {"__key__": "e", "txt": "a caption and no image"},
        {"__key__": "f", "jpg": photo_bytes("rocket.jpg")[:1000], "seg.png": b"\x89PNG"},
    ]
    shard = str(write_shard(tmp_path / "s.tar", samples))
    limit = len(photo_bytes("rocket.jpg")) - 1
    fn = OpenShardsFn(("TXT", "json"), limit, local_paths=True)
    rows, failures, added, repeats = open_shard(fn, shard)

    assert [(uri, image.kept) for uri, image in rows] == [
        (f"{shard}#a.png", ("a photo of horse.png", '{"source": "horse.png"}')),
        (f"{shard}#b.png", ("", "{}")),
        (f"{shard}#f.jpg", ("", "")),
        (f"{shard}#f.seg.png", ("", "")),
    ]
    assert all(isinstance(image, ShardImage) for _, image in rows)
    assert rows[0][1].data == photo_bytes("horse.png")
    assert failures[f"{shard}#c.png"][0] == "UnicodeDecodeError"
    assert "its c.txt is not UTF-8 text" in failures[f"{shard}#c.png"][1]
    assert failures[f"{shard}#d.jpg"][0] == "ImageTooLargeError"
    assert len(failures) == 2 and repeats == 1
    # The shard's listed row becomes its members' rows: images and the repeat.
    assert added == [len(rows) + repeats - 1]

    # A listing row's kept values go with each member where shards are not the listing.
    listed = OpenShardsFn(None, 10**7, local_paths=True)
    rows, _, _, _ = open_shard(listed, shard, ("licence-x",))
    assert {image.kept for _, image in rows} == {("licence-x",)}
    assert open_shard(listed, "/d/photo.jpg", ("v",))[0] == [("/d/photo.jpg", ("v",))]
    assert open_shard(fn, "/d/photo.jpg")[0] == [("/d/photo.jpg", ("", ""))]


def test_a_cut_missing_or_imageless_shard_is_accounted_for(tmp_path):
    shard = write_shard(
        tmp_path / "s.tar", [captioned(k, n) for k, n in zip("ab", SMALL[:2], strict=True)]
    )
    header, data = offsets(shard)["b.png"]
    fn = OpenShardsFn(("txt",), 10**7, local_paths=True)

    inside = str(cut(shard, data + 50, tmp_path / "inside.tar"))
    rows, failures, added, _ = open_shard(fn, inside)
    assert [uri for uri, _ in rows] == [f"{inside}#a.png"]
    assert list(failures) == [f"{inside}#b.png"]
    assert failures[f"{inside}#b.png"][0] == "ShardReadError" and added == [0]

    between = str(cut(shard, header, tmp_path / "between.tar"))
    rows, failures, added, _ = open_shard(fn, between)
    assert [uri for uri, _ in rows] == [f"{between}#a.png"]
    assert failures == {between: ("ShardReadError", failures[between][1])}
    before = sum(start < header for start, _ in offsets(shard).values())
    assert f"after its {before} members" in failures[between][1] and added == [0]

    for uri, error_type in {
        str(tmp_path / "missing.tar"): "FileNotFoundError",
        str(write_shard(tmp_path / "text.tar", [{"__key__": "a", "txt": "x"}])): "NoImagesInShard",
        str(cut(shard, 100, tmp_path / "stub.tar")): "ShardReadError",
    }.items():
        rows, failures, added, _ = open_shard(fn, uri)
        assert rows == [] and list(failures) == [uri] and added == [-1], uri
        assert failures[uri][0] == error_type, failures

    remote = OpenShardsFn(None, 10**7, local_paths=False)
    _, failures, _, _ = open_shard(remote, str(shard))
    assert failures[str(shard)][0] == "UnsupportedUriError"
    _, failures, _, _ = open_shard(remote, "https://127.0.0.1:9/s.tar")
    assert "shards are streamed from storage" in failures["https://127.0.0.1:9/s.tar"][1]


# --- Runs -----------------------------------------------------------------------------------


def numbered(names: list[str], start: int = 0) -> list[dict]:
    return [captioned(f"{i:04d}", name) for i, name in enumerate(names, start=start)]


def image_name(key: int, photo: str) -> str:
    return f"{key:04d}.{photo.rsplit('.', 1)[1]}"


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory):
    """A run over a listing of two shards, a cut shard, a missing one and the same photos
    as files; tests that change the output copy it first."""
    folder = tmp_path_factory.mktemp("shards")
    first = write_shard(folder / "part-00000.tar", numbered(SMALL[:2]))
    second = write_shard(folder / "part-00001.tar", numbered(SMALL[2:], start=2))
    (folder / "broken").mkdir()
    broken = cut(second, offsets(second)["0003.jpg"][1] + 100, folder / "broken" / "part.tar")
    missing = folder / "part-00009.tar"
    files = [str(PHOTOS / name) for name in SMALL]
    listing = [str(first), str(second), str(broken), str(missing), *files]
    output = folder / "out"
    result = run_cli(
        "--input", str(write_csv(folder / "shards.csv", listing)), "--output", str(output),
        "--weights", "random", "--precision", "float32", "--keep_columns", "txt,json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    members = {
        member_uri(str(first), image_name(i, name)): name for i, name in enumerate(SMALL[:2])
    } | {
        member_uri(str(second), image_name(i, name)): name
        for i, name in enumerate(SMALL[2:], start=2)
    }
    return {
        "folder": folder, "output": output, "members": members, "files": files,
        "shards": [first, second], "broken": broken, "missing": missing,
    }  # fmt: skip


@pytest.mark.pipeline_run
def test_shard_members_embed_as_the_same_photos_read_as_files(shard_run):
    embeddings = parquet_embeddings(shard_run["output"])
    members = shard_run["members"]
    broken = str(shard_run["broken"])
    assert set(embeddings) == {*members, *shard_run["files"], f"{broken}#0002.png"}
    for uri, name in members.items():
        np.testing.assert_allclose(embeddings[uri], embeddings[str(PHOTOS / name)], atol=1e-6)

    table, _ = read_parquet(shard_run["output"])
    kept = {row["uri"]: (row["txt"], row["json"]) for row in table.to_pylist()}
    for uri, name in members.items():
        assert kept[uri] == (f"a photo of {name}", f'{{"source": "{name}"}}')
    assert {kept[path] for path in shard_run["files"]} == {("", "")}

    failures = {r["uri"]: r["error_type"] for r in dead_letter(shard_run["output"])}
    assert failures == {
        f"{broken}#0003.jpg": "ShardReadError",
        str(shard_run["missing"]): "FileNotFoundError",
    }
    made = summary(shard_run["output"])
    # Four members in the whole shards, one read and one cut in the cut shard, the missing
    # shard, and four files.
    assert (made["rows_read"], made["embedded"], made["failed"]) == (11, 9, 2)
    assert made["reconciled"] and made["failed_by_stage"]["read"] == 2


@pytest.mark.pipeline_run
def test_skip_existing_embeds_only_the_members_not_embedded_before(shard_run, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(shard_run["output"], output)
    new = write_shard(tmp_path / "part-00002.tar", numbered(["camera.png"], start=9))
    listing = write_csv(tmp_path / "shards.csv", [*map(str, shard_run["shards"]), str(new)])
    result = run_cli(
        "--input", str(listing), "--output", str(output), "--weights", "random",
        "--precision", "float32", "--keep_columns", "txt,json", "--skip_existing",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    made = summary(output)
    assert made["skipped_existing"] == len(shard_run["members"])
    assert (made["rows_read"], made["embedded"], made["reconciled"]) == (5, 1, True)
    assert member_uri(str(new), "0009.png") in parquet_embeddings(output)


@pytest.mark.pipeline_run
def test_search_takes_a_member_uri_as_its_query_image(shard_run):
    query = next(iter(shard_run["members"]))
    result = run_module(
        "pipeline.search", [str(shard_run["output"]), "--image", query, "--k", "3", "--json"],
        cwd=REPO, env=dict(os.environ), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert found[0]["uri"] in (query, str(PHOTOS / shard_run["members"][query]))
    assert {row["uri"] for row in found[:2]} == {query, str(PHOTOS / shard_run["members"][query])}
    assert found[1]["similarity"] > 1 - 1e-5


BUCKET = "shard-bucket"


@pytest.mark.pipeline_run
def test_a_glob_of_gs_shards_embeds_as_the_local_ones(shard_run, tmp_path):
    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            bucket = emulator_client(emulator).bucket(BUCKET)
            for shard in [*shard_run["shards"], shard_run["broken"]]:
                bucket.blob(f"shards/{shard.name}").upload_from_filename(str(shard))
            env = {"STORAGE_EMULATOR_HOST": emulator, **metadata.environment}
            result = run_cli(
                "--input", f"gs://{BUCKET}/shards/*.tar", "--output", f"gs://{BUCKET}/out",
                "--weights", "random", "--precision", "float32", "--keep_columns", "txt",
                env=env,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr[-3000:]
            local = tmp_path / "out"
            for blob in bucket.client.list_blobs(BUCKET, prefix="out/"):
                target = local / blob.name.removeprefix("out/")
                target.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(target)
    finally:
        metadata.close()
    on_gcs = parquet_embeddings(local)
    here = parquet_embeddings(shard_run["output"])
    expected = {
        uri.replace(str(shard_run["folder"]), f"gs://{BUCKET}/shards").replace(
            "/broken/part.tar", "/part.tar"
        ): vector
        for uri, vector in here.items()
        if "#" in uri
    }
    assert set(on_gcs) == set(expected)
    for uri, vector in expected.items():
        np.testing.assert_allclose(on_gcs[uri], vector, atol=1e-6)
    failures = {r["uri"]: r["error_type"] for r in dead_letter(local)}
    assert failures == {f"gs://{BUCKET}/shards/part.tar#0003.jpg": "ShardReadError"}
    made = summary(local)
    assert (made["rows_read"], made["embedded"], made["reconciled"]) == (6, 5, True)
