"""--neighbors and --duplicate_threshold end to end, on altered copies of real photographs.

With --weights random the embeddings mean nothing, but they are deterministic and, once
mean-centred, an altered copy still lies nearer its own photograph than any other. What
a threshold below 1 admits with random weights means nothing, except for byte-identical
copies: their embeddings are equal, so they group at any threshold.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import (
    PHOTOS,
    altered_copies,
    centred_cosines,
    npy_embeddings,
    npy_index,
    parquet_embeddings,
    read_neighbors,
    run_cli,
    shared_folder,
    summary,
    write_csv,
)
from vector_format import check_vector_search_folder

from pipeline.job import check_earlier_outputs
from pipeline.options import EmbeddingOptions, UsageError, parse_options
from pipeline.outputs.naming import RUN_ID_PATTERN, datapoint_id

# Seven of the thirteen photographs. Left out, from a run over all thirteen with every
# copy below: the brightened or bordered copies of the low-contrast textures and
# grayscale scenes (camera, coins, grass, gravel, ihc) have their top neighbour in
# another photograph's family with random weights - brightening and a black border move
# a random network's embedding along one direction whatever the photograph, and for
# those five it outweighs the photograph (e.g. gravel-bright's top neighbour was
# ihc-bright at 0.81, against 0.65 for its own family). horse is a near-binary
# silhouette that brightening leaves almost unchanged, so its copy would test nothing.
# With these seven, every copy's own family beats every other photograph's images by
# 0.018 to 0.32 in cosine similarity.
PHOTO_NAMES = (
    "astronaut.png",
    "brick.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "rocket.jpg",
)
K = 5
THRESHOLD = 0.9999
LOOSE = 0.9  # with random weights, altered copies and other photographs' images mix here
IDENTICAL = 1 - 1e-6  # byte-identical copies' similarity: 1 up to float32 rounding


def write_family(root: Path) -> dict[str, dict[str, str]]:
    """Writes each photograph's copies under root; photo name -> {kind: uri}."""
    altered, identical = root / "altered", root / "identical"
    altered.mkdir(exist_ok=True)
    identical.mkdir(exist_ok=True)
    families = {}
    for name in PHOTO_NAMES:
        source = PHOTOS / name
        members = {"original": str(source)}
        with Image.open(source) as image:
            image.load()
        for suffix, (copy, params) in altered_copies(image).items():
            path = altered / f"{source.stem}-{suffix}"
            copy.save(path, **params)
            members[suffix.split(".")[0]] = str(path)
        copy_path = identical / f"copy-of-{source.stem}{source.suffix}"
        shutil.copyfile(source, copy_path)
        members["identical"] = str(copy_path)
        families[name] = members
    (root / "family.json").write_text(json.dumps(families))
    return families


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, dict[str, str]]:
    """photo name -> {kind: uri}: "original" (the photograph in place), one per alteration,
    and "identical", a byte-identical copy under another name in another folder. Made
    once per session: runs that other files share embed the same URIs."""
    root = shared_folder(tmp_path_factory, "photo-copies", write_family)
    return json.loads((root / "family.json").read_text())


def photo_of(family: dict[str, dict[str, str]]) -> dict[str, str]:
    return {uri: name for name, members in family.items() for uri in members.values()}


def read_groups(output: Path) -> list[tuple[int, str, float]]:
    return [(number, uri, similarity) for number, uri, similarity, _ in read_rows(output)]


def read_rows(output: Path) -> list[tuple[int, str, float, int]]:
    rows = []
    for path in sorted(glob.glob(str(output / "duplicates-*.csv"))):
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == ["group", "uri", "similarity", "component"]
            rows.extend(
                (int(r["group"]), r["uri"], float(r["similarity"]), int(r["component"]))
                for r in reader
            )
    return rows


def groups_of(rows: list[tuple[int, str, float]]) -> dict[int, list[tuple[str, float]]]:
    groups: dict[int, list[tuple[str, float]]] = {}
    for number, uri, similarity in rows:
        groups.setdefault(number, []).append((uri, similarity))
    return groups


def run_ids(output: Path, name: str) -> set[str]:
    pattern = re.compile(rf"{name}-({RUN_ID_PATTERN})-\d{{5}}-of-\d{{5}}\.")
    return {
        pattern.match(Path(path).name).group(1) for path in glob.glob(str(output / f"{name}-*"))
    }


@pytest.fixture(scope="module")
def searched(family, tmp_path_factory):
    """One run over the photographs and all their copies: neighbours and duplicate groups."""
    root = tmp_path_factory.mktemp("searched")
    uris = [uri for members in family.values() for uri in members.values()]
    csv_path = write_csv(root / "images.csv", uris)
    output = root / "out"
    result = run_cli(
        "--input", str(csv_path),
        "--output", str(output),
        "--weights", "random",
        "--neighbors", str(K),
        "--duplicate_threshold", str(THRESHOLD),
        as_user=True,  # auto: bfloat16 where the CPU has AMX, which the groups tolerate
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return output, uris


@pytest.mark.pipeline_run
def test_every_image_has_k_neighbours_sorted_never_itself(searched):
    output, uris = searched
    neighbors = read_neighbors(output)
    assert set(neighbors) == set(uris)
    for uri, (names, similarities) in neighbors.items():
        assert len(names) == K and len(set(names)) == K and uri not in names
        assert set(names) <= set(uris)
        assert all(a >= b for a, b in itertools.pairwise(similarities))


@pytest.mark.pipeline_run
def test_neighbours_are_numpys_exact_top_k_of_the_stored_embeddings(searched):
    output, _ = searched
    neighbors = read_neighbors(output)
    uris, cosines = centred_cosines(parquet_embeddings(output))
    index = {uri: i for i, uri in enumerate(uris)}
    np.fill_diagonal(cosines, -np.inf)
    for uri, (names, similarities) in neighbors.items():
        row = cosines[index[uri]]
        np.testing.assert_allclose(similarities, row[[index[n] for n in names]], atol=1e-5)
        # The values, not the order: exact ties (identical copies) are ordered by URI.
        np.testing.assert_allclose(similarities, np.sort(row)[::-1][:K], atol=1e-5)


@pytest.mark.pipeline_run
def test_every_copys_top_neighbour_is_its_own_photographs(family, searched):
    output, _ = searched
    neighbors = read_neighbors(output)
    photo = photo_of(family)
    strays = {
        Path(uri).name: [(Path(n).name, round(s, 4)) for n, s in zip(*neighbors[uri], strict=True)]
        for name, members in family.items()
        for kind, uri in members.items()
        if kind != "original" and photo[neighbors[uri][0][0]] != name
    }
    assert strays == {}, f"top neighbour from another photograph: {strays}"
    # The photographs themselves too: their nearest is one of their own copies.
    for name, members in family.items():
        assert photo[neighbors[members["original"]][0][0]] == name


@pytest.mark.pipeline_run
def test_identical_copies_are_each_others_neighbours_at_similarity_one(family, searched):
    output, _ = searched
    neighbors = read_neighbors(output)
    for members in family.values():
        for uri, other in ((members["original"], members["identical"]),
                           (members["identical"], members["original"])):  # fmt: skip
            names, similarities = neighbors[uri]
            assert other in names, f"{other} is not among {uri}'s neighbours"
            assert similarities[names.index(other)] >= IDENTICAL
            assert similarities[0] >= IDENTICAL


@pytest.mark.pipeline_run
def test_identical_copies_share_their_photographs_group(family, searched):
    output, _ = searched
    group_of = {uri: number for number, uri, _ in read_groups(output)}
    for members in family.values():
        original, copy = members["original"], members["identical"]
        assert original in group_of, f"{original} is in no duplicate group"
        assert group_of.get(copy) == group_of[original]


@pytest.mark.pipeline_run
def test_no_group_mixes_two_photographs(family, searched):
    output, _ = searched
    photo = photo_of(family)
    groups = groups_of(read_groups(output))
    assert groups
    for number, members in groups.items():
        photos = {photo[uri] for uri, _ in members}
        assert len(photos) == 1, f"group {number} holds images of {sorted(photos)}"


@pytest.mark.pipeline_run
def test_groups_are_numbered_largest_first_with_the_largest_image_leading(searched):
    output, _ = searched
    groups = groups_of(read_groups(output))
    assert sorted(groups) == list(range(1, len(groups) + 1))
    sizes = [len(groups[number]) for number in sorted(groups)]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 2
    for members in groups.values():
        uris = [uri for uri, _ in members]
        assert len(set(uris)) == len(uris)

        def pixels(uri: str) -> int:
            with Image.open(uri) as image:
                return image.width * image.height

        assert uris[0] == min(uris, key=lambda uri: (-pixels(uri), uri))
        assert members[0][1] == 1.0
        assert all(similarity <= 1.0 for _, similarity in members)


def largest_component(output: Path, threshold: float) -> tuple[int, int]:
    """(images, pairs) of the largest connected component of the pairs >= threshold, largest
    by images then pairs as the summary picks it, from numpy's similarities of the stored
    embeddings."""
    uris, cosines = centred_cosines(parquet_embeddings(output))
    root = list(range(len(uris)))

    def find(i: int) -> int:
        while root[i] != i:
            i = root[i]
        return i

    pairs = list(zip(*np.nonzero(np.triu(cosines >= threshold, k=1)), strict=True))
    for i, j in pairs:
        root[find(i)] = find(j)
    images: dict[int, int] = {}
    for i in range(len(uris)):
        images[find(i)] = images.get(find(i), 0) + 1
    counted = {component: 0 for component in images}
    for i, _ in pairs:
        counted[find(i)] += 1
    return max(((images[c], counted[c]) for c in images if counted[c]), default=(0, 0))


@pytest.mark.pipeline_run
def test_summary_counts_what_the_files_hold(searched):
    output, uris = searched
    described = summary(output)
    similarity = described["similarity"]
    rows = read_groups(output)
    assert described["embedded"] == len(uris)
    assert similarity["images"] == len(uris)
    assert similarity["method"] == "exact" and similarity["cells"] == 1
    assert similarity["centred"] is True
    neighbors = read_neighbors(output)
    assert similarity["neighbors"] == {
        "k": K,
        "images": len(neighbors),
        "bands": similarity["neighbors"]["bands"],
    }
    # Bands: each listed pair once, at the larger of its two sides' similarities, counted
    # with numpy against each band's floor.
    pairs: dict[tuple[str, str], float] = {}
    for uri, (names, similarities) in neighbors.items():
        for name, value in zip(names, similarities, strict=True):
            if name == uri:
                continue
            key = tuple(sorted((uri, name)))
            pairs[key] = max(value, pairs.get(key, -2.0))
    values = np.array(list(pairs.values()))
    floors = np.array([0.99, 0.97, 0.95, 0.90, 0.85, 0.80])
    ceilings = np.concatenate([[np.inf], floors[:-1]])
    counted = [
        int(((values >= low) & (values < high)).sum())
        for low, high in zip(floors, ceilings, strict=True)
    ]
    counted.append(int((values < floors[-1]).sum()))
    assert [band["pairs"] for band in similarity["neighbors"]["bands"]] == counted
    assert sum(counted) == len(pairs) > 0
    components = {component for _, _, _, component in read_rows(output)}
    assert similarity["duplicates"] == {
        "threshold": THRESHOLD,
        "groups": len({number for number, _, _ in rows}),
        "images": len(rows),
        "components": len(components),
        "largest_component": similarity["duplicates"]["largest_component"],
    }
    # The largest component, from the stored embeddings, not from the groups: the run takes
    # auto's precision, bfloat16 on a CPU with AMX or an AMD one with BF16, which moves a
    # pair near T by up to 1.5e-4 (tests/test_engine.py), and pairs inside these families'
    # components sit closer to T than that (two of hubble_deep_field's copies 5.1e-5 above
    # it in float32), so whether each component is one group of copies, every pair >= T,
    # depends on the CPU. The engine counts a pair >= T - 1e-6 in float32, numpy's float64
    # differs by up to 4e-7: the summary lies between numpy's largest with 1e-5 more and
    # 1e-5 less.
    largest = similarity["duplicates"]["largest_component"]
    tolerance = 1e-5
    assert (
        largest_component(output, THRESHOLD - 1e-6 + tolerance)
        <= (largest["images"], largest["pairs"])
        <= largest_component(output, THRESHOLD - 1e-6 - tolerance)
    )
    assert largest["images"] >= max(map(len, groups_of(rows).values()))
    outputs = described["outputs"]
    assert sorted(glob.glob(outputs["neighbors"])) == sorted(
        glob.glob(str(output / "neighbors-*.parquet"))
    )
    assert len(glob.glob(outputs["duplicates"])) == 1


def ties_out_of_uri_order(neighbors: dict, family: dict) -> tuple[int, list]:
    """Byte-identical copies have equal embeddings, so equal similarities to every image:
    where a list has room for only one of the two, it must be the smaller URI. Returns
    how many lists had room for one only, and those that listed the larger URI."""
    checked, wrong = 0, []
    for uri, (names, similarities) in neighbors.items():
        for members in family.values():
            pair = {members["original"], members["identical"]} - {uri}
            listed = pair & set(names)
            if len(pair) == 2 and len(listed) == 1:
                checked += 1
                if listed != {min(pair)}:
                    (name,) = listed
                    wrong.append((uri, name, similarities[names.index(name)], min(pair)))
    return checked, wrong


def embed(csv_path: Path, output: Path, *flags: str, neighbors: bool = True) -> dict:
    result = run_cli(
        "--input", str(csv_path),
        "--output", str(output),
        "--output_format", "npy",
        "--weights", "random",
        *(("--neighbors", "4") if neighbors else ()),
        *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return summary(output)


@pytest.mark.pipeline_run
def test_a_skip_existing_run_searches_earlier_runs_images_too(family, tmp_path):
    # The photographs, their byte-identical copies (exact ties, ordered by URI) and two
    # alterations each. The first run holds four photographs' families in part; the
    # second adds the rest, so that many images' neighbours come from the other run.
    names = list(family)
    first = [family[name]["original"] for name in names[:4]]
    first += [family[name]["identical"] for name in names[4:]]
    first += [family[name]["half"] for name in names[::2]]
    everything = [family[name][kind] for name in names
                  for kind in ("original", "identical", "half", "bright")]  # fmt: skip
    second = [uri for uri in everything if uri not in first]
    assert len(first) + len(second) == len(everything)

    incremental, fresh = tmp_path / "incremental", tmp_path / "fresh"
    grouping = ("--duplicate_threshold", str(LOOSE))
    first_summary = embed(write_csv(tmp_path / "first.csv", first), incremental, *grouping)
    assert first_summary["similarity"]["images"] == len(first)
    earlier = run_ids(incremental, "neighbors")
    assert len(earlier) == 1
    both = write_csv(tmp_path / "all.csv", everything)
    second_summary = embed(both, incremental, "--skip_existing", *grouping)
    vectors = tmp_path / "vectors"
    embed(both, fresh, *grouping, "--vector_search_output", str(vectors))

    assert second_summary["embedded"] == len(second)
    assert second_summary["similarity"]["images"] == len(everything)
    assert second_summary["similarity"]["neighbors"]["images"] == len(everything)
    later = run_ids(incremental, "neighbors")
    assert len(later) == 1 and later != earlier, "the first run's neighbours were not replaced"
    assert set(npy_embeddings(incremental)) == set(everything)

    found, expected = read_neighbors(incremental), read_neighbors(fresh)
    assert set(found) == set(expected) == set(everything)
    # Identical copies tie at the last place of some lists (with these images, k = 4);
    # ties go to the smaller URI in both runs, whatever order the images were read in.
    for neighbors in (expected, found):
        checked, wrong = ties_out_of_uri_order(neighbors, family)
        assert checked > 0, "no list had room for only one of two identical copies"
        assert wrong == [], f"(image, listed, similarity, tied smaller URI left out): {wrong}"
    for uri, (names_found, similarities) in found.items():
        names_expected, similarities_expected = expected[uri]
        np.testing.assert_allclose(similarities, similarities_expected, atol=1e-4, err_msg=uri)
        assert names_found == names_expected, (
            f"{uri}: same similarities, other images: "
            f"{list(zip(names_found, similarities, strict=True))} after --skip_existing, "
            f"{list(zip(names_expected, similarities_expected, strict=True))} in one run"
        )

    # The same near-duplicate groups, numbers and components as one run over everything.
    groups_found, groups_expected = read_rows(incremental), read_rows(fresh)
    assert len({number for number, *_ in groups_expected}) >= 2
    assert [(n, uri, c) for n, uri, _, c in groups_found] == [
        (n, uri, c) for n, uri, _, c in groups_expected
    ]
    np.testing.assert_allclose(
        [s for _, _, s, _ in groups_found], [s for _, _, s, _ in groups_expected], atol=1e-5
    )

    # keep and drop_reason: the first run's index was rewritten with the decisions over
    # everything, equal to one run's; a group's members but its representative dropped.
    decided = {row["uri"]: (row["keep"], row["drop_reason"]) for row in npy_index(incremental)}
    assert decided == {row["uri"]: (row["keep"], row["drop_reason"]) for row in npy_index(fresh)}
    assert len(decided) == len(everything)
    representatives: dict[int, str] = {}
    expected = {uri: ("true", "") for uri in everything}
    for number, uri, _, _ in groups_expected:
        if number in representatives:
            expected[uri] = ("false", f"duplicate_of:{representatives[number]}")
        representatives.setdefault(number, uri)
    assert decided == expected
    # The one run's Vector Search datapoints, read back from its decided .npy files,
    # carry the same decisions and the same embeddings.
    files = {str(path): path.read_bytes() for path in vectors.iterdir()}
    points = check_vector_search_folder(files, str(vectors), dimensions=2048)
    stored = npy_embeddings(fresh)
    assert len(points) == len(everything)
    for uri, (keep, why) in expected.items():
        point = points[datapoint_id(uri)]
        reason = [{"namespace": "drop_reason", "allow": [why]}] if why else []
        assert point["restricts"] == [{"namespace": "keep", "allow": [keep]}, *reason]
        assert np.array_equal(np.array(point["embedding"], np.float32), stored[uri])
    dropped = sum(1 for keep, _ in decided.values() if keep == "false")
    assert second_summary["keep"]["dropped"] == dropped > 0
    assert second_summary["keep"]["files_rewritten"] == len(glob.glob(str(
        incremental / "embeddings-index-*.csv"
    ))) == 2  # fmt: skip

    # A later run must decide again: one without --duplicate_threshold is refused (the
    # check a run makes once it holds the output, here in this process).
    opts = parse_options(
        ["--input", str(both), "--output", str(incremental), "--output_format", "npy",
         "--weights", "random", "--skip_existing"]
    ).view_as(EmbeddingOptions)  # fmt: skip
    with pytest.raises(UsageError, match="carry keep and drop_reason"):
        check_earlier_outputs(opts)

    # A later run without --neighbors removes what no longer describes the output.
    embed(both, incremental, "--skip_existing", *grouping, neighbors=False)
    assert run_ids(incremental, "neighbors") == set()


@pytest.fixture(scope="module")
def loosely_grouped(family, tmp_path_factory):
    """One run over every image at a threshold low enough for chains between images."""
    root = tmp_path_factory.mktemp("loose")
    uris = [uri for members in family.values() for uri in members.values()]
    output = root / "out"
    result = run_cli(
        "--input", str(write_csv(root / "images.csv", uris)),
        "--output", str(output),
        "--weights", "random",
        "--duplicate_threshold", str(LOOSE),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return output


def pixels_of(uri: str) -> int:
    with Image.open(uri) as image:
        return image.width * image.height


@pytest.mark.pipeline_run
def test_loose_groups_hold_only_images_within_the_threshold_of_the_one_kept(
    family, loosely_grouped
):
    output = loosely_grouped
    rows = read_rows(output)
    uris, cosines = centred_cosines(parquet_embeddings(output))
    index = {uri: i for i, uri in enumerate(uris)}
    groups = groups_of([(number, uri, similarity) for number, uri, similarity, _ in rows])
    assert len(groups) >= 2
    for members in groups.values():
        representative = index[members[0][0]]
        assert members[0][1] == 1.0
        for uri, similarity in members[1:]:
            recomputed = cosines[representative, index[uri]]
            assert similarity == pytest.approx(recomputed, abs=1e-5), uri
            assert recomputed >= LOOSE - 1e-5, f"{uri} is {recomputed:.4f} from what is kept"
    # The same groups as a walk over numpy's similarities of every pair.
    order = sorted(uris, key=lambda uri: (-pixels_of(uri), uri))
    grouped, expected = set(), []
    for uri in order:
        if uri in grouped:
            continue
        near = [other for other in uris if other != uri and other not in grouped
                and cosines[index[uri], index[other]] >= LOOSE - 1e-6]  # fmt: skip
        if near:
            grouped.update([uri, *near])
            expected.append((uri, set(near)))
    found = sorted((m[0][0], {uri for uri, _ in m[1:]}) for m in groups.values())
    assert found == sorted(expected)
    # Identical copies share a group; a component holds one or more whole groups.
    group_of = {uri: number for number, uri, _, _ in rows}
    for members in family.values():
        assert group_of[members["identical"]] == group_of[members["original"]]
    component_of = {number: component for number, _, _, component in rows}
    assert len({(n, c) for n, _, _, c in rows}) == len(groups)
    assert all(component <= number for number, component in component_of.items())
    described = summary(output)["similarity"]["duplicates"]
    assert described["groups"] == len(groups) and described["images"] == len(rows)
    assert described["components"] == len(set(component_of.values()))
