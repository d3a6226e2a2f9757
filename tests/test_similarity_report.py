"""report.html with --neighbors and --duplicate_threshold, opened in Chromium."""

from __future__ import annotations

import csv
import glob
import shutil

import pyarrow.parquet as pq
import pytest
from browser import chromium, console_problems, save_screenshot
from support import PHOTO_PATHS, run_cli, summary, write_csv
from test_map import visible_spot


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The photographs plus a byte-identical copy of one, with neighbours, groups and a map."""
    root = tmp_path_factory.mktemp("similarity-report")
    copy = root / "copies" / "brick-again.png"
    copy.parent.mkdir()
    shutil.copyfile(next(path for path in PHOTO_PATHS if path.endswith("brick.png")), copy)
    output = root / "out"
    result = run_cli(
        "--input", str(write_csv(root / "images.csv", [*PHOTO_PATHS, str(copy)])),
        "--output", str(output),
        "--weights", "random",
        "--neighbors", "3",
        "--duplicate_threshold", "0.9999",
        "--map",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pq.read_table(glob.glob(str(output / "neighbors-*.parquet")))
    neighbors = {row["uri"]: row for row in table.to_pylist()}
    groups: dict[int, list[tuple[str, float]]] = {}
    components: dict[int, int] = {}
    for path in glob.glob(str(output / "duplicates-*.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                groups.setdefault(int(row["group"]), []).append(
                    (row["uri"], float(row["similarity"]))
                )
                components[int(row["group"])] = int(row["component"])
    return output, neighbors, (groups, components)


def click(driver, spot: tuple[int, int]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(*spot)
    actions.pointer_action.click()
    actions.perform()


def shown_neighbors(driver) -> list[tuple[str, str, int]]:
    """(uri, caption, decoded width) of each neighbour the details panel lists."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#neighbor-list .neighbor')].map(figure => ["
        "  figure.title, figure.querySelector('figcaption').textContent,"
        "  figure.querySelector('img').naturalWidth]);"
    )


def assert_lists_the_neighbours(driver, neighbors: dict) -> str:
    """The details panel names a point and lists all its neighbours, in order; its URI."""
    from selenium.webdriver.common.by import By

    uri = driver.find_element(By.ID, "detail-uri").text
    expected = neighbors[uri]
    listed = shown_neighbors(driver)
    # Every image is on the map here, so every neighbour is listed, in order.
    assert [name for name, _, _ in listed] == expected["neighbors"]
    assert [caption for _, caption, _ in listed] == [
        f"{similarity:.4f}" for similarity in expected["similarities"]
    ]
    assert all(width > 0 for _, _, width in listed), "a thumbnail did not decode"
    return uri


@pytest.mark.pipeline_run
def test_clicking_a_thumbnail_lists_its_nearest_neighbours(reported):
    from selenium.webdriver.common.by import By

    output, neighbors, _ = reported
    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        count = int(driver.execute_script("return document.body.dataset.pointsDrawn"))
        assert count == len(neighbors) == len(PHOTO_PATHS) + 1
        assert not driver.find_element(By.ID, "detail-neighbors").is_displayed()
        uris = driver.execute_script(
            "return JSON.parse(document.getElementById('map-data').textContent)"
            ".points.map(p => p.uri)"
        )
        hidden = []
        for index in range(count):
            spot = visible_spot(driver, index, required=False)
            if spot is None:
                hidden.append(uris[index])
                continue
            click(driver, spot)
            assert assert_lists_the_neighbours(driver, neighbors) == uris[index]

        # The byte-identical copy sits exactly on its original, hiding one of them; the
        # badge on the two counts them and brings the hidden one to the front.
        assert len(hidden) == 1 and hidden[0].endswith(("/brick.png", "/brick-again.png"))
        badge = driver.find_element(By.CSS_SELECTOR, "#stack-badges .stack-badge")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#stack-badges .stack-badge")) == 1
        assert badge.find_element(By.TAG_NAME, "text").text == "\u00d72"
        title = badge.find_element(By.TAG_NAME, "title").get_attribute("textContent")
        assert sorted(title.splitlines()[1:]) == sorted(
            uri for uri in uris if uri.endswith(("/brick.png", "/brick-again.png"))
        )
        centre = driver.execute_script(
            "const box = arguments[0].getBoundingClientRect();"
            "return [box.x + box.width / 2, box.y + box.height / 2].map(Math.round);",
            badge,
        )
        click(driver, centre)
        assert assert_lists_the_neighbours(driver, neighbors) == hidden[0]

        # Clicking a listed neighbour moves the panel to it.
        first = shown_neighbors(driver)[0][0]
        driver.find_element(By.CSS_SELECTOR, "#neighbor-list .neighbor").click()
        assert driver.find_element(By.ID, "detail-uri").text == first
        assert [name for name, _, _ in shown_neighbors(driver)] == neighbors[first]["neighbors"]
        save_screenshot(driver, "report-neighbors.png")
        assert console_problems(driver) == []


@pytest.mark.pipeline_run
def test_the_duplicates_section_shows_the_groups_as_thumbnails(reported):
    from selenium.webdriver.common.by import By

    output, _, (groups, components) = reported
    record = summary(output)["similarity"]["duplicates"]
    assert record["groups"] == len(groups) >= 1
    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        heading = driver.find_element(By.ID, "duplicates").text
        assert heading == f"Near-duplicate groups ({record['groups']})"
        shown = driver.execute_script(
            "return [...document.querySelectorAll('.group')].map(group => ["
            "  group.querySelector('h3').textContent,"
            "  [...group.querySelectorAll('figure')].map(figure => [figure.title,"
            "    figure.querySelector('.similarity').textContent,"
            "    figure.querySelector('img') ? figure.querySelector('img').naturalWidth : 0])]);"
        )
        assert len(shown) == len(groups)
        for (title, figures), number in zip(shown, sorted(groups), strict=True):
            members = groups[number]
            assert title == (
                f"Group {number} ({len(members)} images, component {components[number]})"
            )
            assert [name for name, _, _ in figures] == [uri for uri, _ in members]
            assert [caption for _, caption, _ in figures] == [f"{s:.4f}" for _, s in members]
            assert all(width > 0 for _, _, width in figures), "a group thumbnail did not decode"
        brick = {uri for uri, _ in groups[1]}
        assert any(uri.endswith("/brick.png") for uri in brick)
        assert any(uri.endswith("/brick-again.png") for uri in brick)
        text = driver.find_element(By.TAG_NAME, "main").text
        assert f"Near-duplicate groups {record['groups']}" in text
        assert f"Components {record['components']}" in text
        largest = record["largest_component"]
        assert f"Largest component {largest['images']} images, {largest['pairs']} pairs" in text
        # A group's members but its representative are not kept.
        dropped = sum(len(members) - 1 for members in groups.values())
        assert summary(output)["keep"]["dropped"] == dropped
        assert f"Dropped as near-duplicates {dropped}" in text
        assert f"Kept {summary(output)['similarity']['images'] - dropped}" in text
        assert console_problems(driver) == []


def numpy_bands(neighbors: dict) -> tuple[dict[str, int], dict[str, list[tuple[str, str, float]]]]:
    """The neighbour pairs, each once (its larger similarity), counted per band as the
    docs define the bands, and every band's pairs."""
    pairs: dict[tuple[str, str], float] = {}
    for uri, row in neighbors.items():
        for name, similarity in zip(row["neighbors"], row["similarities"], strict=True):
            key = tuple(sorted((uri, name)))
            pairs[key] = max(pairs.get(key, -2.0), similarity)
    floors = [0.99, 0.97, 0.95, 0.90, 0.85, 0.80]
    edges = zip(floors[1:], floors, strict=False)
    names = [">= 0.99"] + [f"{low:.2f}-{high:.2f}" for low, high in edges]
    members: dict[str, list] = {name: [] for name in [*names, "below"]}
    for (first, second), similarity in pairs.items():
        band = next((n for n, low in zip(names, floors, strict=True) if similarity >= low), "below")
        members[band].append((first, second, similarity))
    return {band: len(found) for band, found in members.items()}, members


@pytest.mark.pipeline_run
def test_neighbour_pairs_per_band_are_numpys_and_the_report_shows_the_seeded_samples(reported):
    import hashlib

    output, neighbors, _ = reported
    made = summary(output)
    counts, members = numpy_bands(neighbors)
    recorded = made["similarity"]["neighbors"]["bands"]
    assert {row["band"]: row["pairs"] for row in recorded} == counts
    assert [row["band"] for row in recorded][:2] == [">= 0.99", "0.97-0.99"]
    assert sum(counts.values()) == len(
        {tuple(sorted((uri, name))) for uri, row in neighbors.items() for name in row["neighbors"]}
    )

    def rank(pair) -> str:
        return hashlib.sha256(f"{made['seed']}:{pair[0]}\n{pair[1]}".encode()).hexdigest()

    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        shown = driver.execute_script(
            "return [...document.querySelectorAll('.band')].map(band => [band.dataset.band,"
            "  [...band.querySelectorAll('.band-pair')].map(pair =>"
            "    [...pair.querySelectorAll('figure')].map(figure => [figure.title,"
            "      figure.querySelector('figcaption .similarity').textContent,"
            "      figure.querySelector('img').naturalWidth]))])"
        )
        for band, pairs in shown:
            expected = sorted(members[band], key=rank)[:6]
            expected.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
            assert [(a[0], b[0]) for a, b in pairs] == [(f, s) for f, s, _ in expected], band
            for (a, b), (_, _, similarity) in zip(pairs, expected, strict=True):
                assert a[1] == b[1] == f"{similarity:.4f}"
                assert a[2] > 0 and b[2] > 0, "a thumbnail did not decode"
        assert [band for band, _ in shown] == [
            band for band, count in counts.items() if count and band != "below"
        ]
        assert console_problems(driver) == []
