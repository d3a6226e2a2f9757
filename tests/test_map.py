"""--map end to end: coordinates against numpy's PCA, the PNG, and report.html in Chromium."""

from __future__ import annotations

import base64
import collections
import csv
import functools
import glob
import hashlib
import io
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, console_problems, save_screenshot
from PIL import Image
from support import (
    PHOTO_PATHS,
    make_bad_inputs,
    npy_embeddings,
    parquet_embeddings,
    run_cli,
    summary,
    write_csv,
)

from pipeline.inputs.images import THUMBNAIL_QUALITY
from pipeline.models.labels import LabelList
from pipeline.outputs.labels import describe_labels
from pipeline.report import page as report
from pipeline.report.mapping import THUMBNAIL_SIZE
from pipeline.report.projection import Moments, Projection, principal_components

SEED = 5
SAMPLE = 8  # fewer than the 13 photos, so that the report shows a sample
PCA_TOLERANCE = 1e-4


def read_coordinates(output: Path) -> dict[str, tuple[float, float]]:
    points: dict[str, tuple[float, float]] = {}
    for path in sorted(glob.glob(str(output / "map-coordinates-*.csv"))):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                assert row["uri"] not in points, f"{row['uri']} has two rows"
                points[row["uri"]] = (float(row["x"]), float(row["y"]))
    return points


def numpy_pca(embeddings: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """numpy's PCA of the same embeddings: coordinates per URI and explained variance ratio."""
    uris = sorted(embeddings)
    matrix = np.stack([embeddings[uri] for uri in uris]).astype(np.float64)
    centred = matrix - matrix.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ rows[:2].T
    ratio = singular[:2] ** 2 / np.sum(singular**2)
    return dict(zip(uris, coordinates, strict=True)), ratio


def assert_equal_up_to_sign(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    uris = sorted(expected)
    ours = np.array([actual[uri] for uri in uris])
    theirs = np.array([expected[uri] for uri in uris])
    signs = np.sign(np.sum(ours * theirs, axis=0))
    scale = np.abs(theirs).max()
    error = np.abs(ours - theirs * signs).max() / scale
    assert error <= PCA_TOLERANCE, f"coordinates differ from numpy's PCA by {error:.2e} of scale"


def sample_rank(uri: str) -> str:
    # The documented rule, written out independently of the pipeline's code.
    return hashlib.sha256(f"{SEED}:{uri}".encode()).hexdigest()


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """One --map run over the sample photos plus two bad inputs, Parquet output."""
    root = tmp_path_factory.mktemp("mapped")
    bad = make_bad_inputs(root / "bad")
    csv_path = write_csv(
        root / "images.csv", [*PHOTO_PATHS, bad["truncated.jpg"][0], bad["missing.jpg"][0]]
    )
    output = root / "out"
    output.mkdir()
    stale = output / "map-coordinates-20200101T000000-abcdef-00000-of-00001.csv"
    stale.write_text("uri,x,y\nold.jpg,1.0,2.0\n")
    result = run_cli(
        "--input", str(csv_path),
        "--output", str(output),
        "--weights", "random",
        "--seed", str(SEED),
        "--map",
        "--map_sample_size", str(SAMPLE),
        "--max_failure_fraction", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return output, stale


@pytest.mark.pipeline_run
def test_coordinates_are_numpys_pca_of_the_stored_embeddings(mapped):
    output, _ = mapped
    coordinates = read_coordinates(output)
    expected, _ = numpy_pca(parquet_embeddings(output))
    assert set(coordinates) == set(PHOTO_PATHS)
    assert_equal_up_to_sign(coordinates, expected)


@pytest.mark.pipeline_run
def test_the_earlier_runs_coordinates_are_removed(mapped):
    output, stale = mapped
    assert not stale.exists()
    assert "old.jpg" not in read_coordinates(output)


@pytest.mark.pipeline_run
def test_summary_names_the_map_outputs(mapped):
    output, _ = mapped
    outputs = summary(output)["outputs"]
    for name in ("map_png", "report"):
        assert Path(outputs[name]).is_file()
    assert glob.glob(outputs["map_coordinates"])


@pytest.mark.pipeline_run
def test_png_draws_the_sample_where_its_coordinates_say(mapped):
    output, _ = mapped
    coordinates = read_coordinates(output)
    xy = np.array([coordinates[uri] for uri in sorted(coordinates, key=sample_rank)[:SAMPLE]])
    with Image.open(output / "map.png") as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB")).astype(int)
    dots = pixels[:, :, 2] - pixels[:, :, 0] > 60  # blue dots; everything else is grey
    left, top, right, bottom = _frame(pixels)
    # The axes span the points plus 5% of their range on each side (docs/report.md).
    low = xy.min(axis=0) - 0.05 * np.ptp(xy, axis=0)
    high = xy.max(axis=0) + 0.05 * np.ptp(xy, axis=0)
    columns = np.rint(left + (xy[:, 0] - low[0]) / (high[0] - low[0]) * (right - left))
    rows = np.rint(bottom - (xy[:, 1] - low[1]) / (high[1] - low[1]) * (bottom - top))
    missing = [
        (x, y)
        for x, y in zip(columns.astype(int), rows.astype(int), strict=True)
        if not dots[y - 1 : y + 2, x - 1 : x + 2].any()
    ]
    assert missing == [], f"no dot at {missing}"
    # ...and nowhere else: every dot pixel lies within a dot's radius of some point.
    dot_rows, dot_columns = np.nonzero(dots)
    nearest = np.min(
        np.hypot(dot_columns[:, None] - columns[None, :], dot_rows[:, None] - rows[None, :]),
        axis=1,
    )
    assert nearest.max() <= 7


def _frame(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """left, top, right, bottom of the plot's dark frame, found in the pixels."""
    dark = (pixels < 80).all(axis=2)
    rows = np.nonzero(dark.sum(axis=1) > pixels.shape[1] * 0.5)[0]
    columns = np.nonzero(dark.sum(axis=0) > pixels.shape[0] * 0.5)[0]
    return int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())


def _photo_thumbnail(path: str) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        scale = THUMBNAIL_SIZE / max(rgb.size)
        size = tuple(max(1, round(side * scale)) for side in rgb.size)
        return np.asarray(rgb.resize(size, Image.Resampling.LANCZOS), dtype=float)


def _closest_photo(thumbnail: np.ndarray) -> tuple[str, float]:
    """The photo whose own thumbnail is nearest to thumbnail, and the mean difference."""
    differences = {}
    for path in PHOTO_PATHS:
        reference = _photo_thumbnail(path)
        if reference.shape == thumbnail.shape:
            differences[path] = float(np.abs(reference - thumbnail).mean())
    best = min(differences, key=differences.get)
    return best, differences[best]


def _centres(driver) -> list[tuple[float, float]]:
    """Screen centres of the points, by index, once the page has drawn its next frame."""
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    return driver.execute_script(
        "return [...document.querySelectorAll('#points .point')].map(node => {"
        "  const box = node.getBoundingClientRect();"
        "  return [box.x + box.width / 2, box.y + box.height / 2, Number(node.dataset.index)];"
        "}).sort((a, b) => a[2] - b[2]).map(c => [c[0], c[1]]);"
    )


def visible_spot(driver, index: int, required: bool = True) -> tuple[int, int] | None:
    """A pixel where point index is on top: neighbours' thumbnails may cover its centre."""
    spot = driver.execute_script(
        "const node = document.querySelector(`#points .point[data-index='${arguments[0]}']`);"
        "const box = node.getBoundingClientRect();"
        "const fractions = [0.5, 0.25, 0.75, 0.1, 0.9];"
        "for (const fy of fractions) for (const fx of fractions) {"
        "  const x = Math.round(box.x + box.width * fx), y = Math.round(box.y + box.height * fy);"
        "  if (document.elementFromPoint(x, y) === node) return [x, y];"
        "}"
        "return null;",
        index,
    )
    assert spot is not None or not required, f"point {index} is completely covered"
    return spot


def hover(driver, spot: tuple[int, int]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    # duration=0: one pointermove, at the spot, which is what the page listens to; the
    # 250 ms glide Selenium defaults to only adds a quarter second to every hover.
    actions = ActionBuilder(driver, duration=0)
    actions.pointer_action.move_to_location(*spot)  # whole pixels, as visible_spot gives
    actions.perform()


@pytest.mark.pipeline_run
def test_report_in_chromium_offline(mapped):
    from selenium.webdriver.common.by import By

    output, _ = mapped
    coordinates = read_coordinates(output)
    expected_sample = sorted(coordinates, key=sample_rank)[:SAMPLE]
    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        assert driver.execute_script("return document.body.dataset.pointsDrawn") == str(SAMPLE)
        nodes = driver.find_elements(By.CSS_SELECTOR, "#points .point")
        assert len(nodes) == SAMPLE
        assert all(node.tag_name == "image" for node in nodes), "a point lost its thumbnail"
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(entry => entry.name)"
        )
        assert [name for name in loaded if not name.startswith("data:")] == []

        # Hover every point: the panel must show its URI and its image, at its place.
        shown = {}
        centres = _centres(driver)
        for index, (x, y) in enumerate(centres):
            hover(driver, visible_spot(driver, index))
            uri = driver.find_element(By.ID, "detail-uri").text
            source = driver.find_element(By.ID, "detail-thumbnail").get_attribute("src")
            assert (
                driver.execute_script(
                    "return document.getElementById('detail-thumbnail').naturalWidth"
                )
                == _photo_thumbnail(uri).shape[1]
            ), "the browser did not decode the thumbnail"
            data = base64.b64decode(source.split(",", 1)[1])
            thumbnail = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
            closest, difference = _closest_photo(thumbnail)
            assert closest == uri and difference < 8, (uri, closest, difference)
            shown[uri] = (x, y)
        assert sorted(shown) == sorted(expected_sample)

        # Screen positions are an axis-aligned affine image of the coordinates
        # (y upwards), so each URI sits where its coordinates put it.
        data_xy = np.array([coordinates[uri] for uri in shown])
        screen_xy = np.array(list(shown.values()))
        for axis, direction in ((0, 1), (1, -1)):
            slope, intercept = np.polyfit(data_xy[:, axis], screen_xy[:, axis], 1)
            assert np.sign(slope) == direction
            residual = screen_xy[:, axis] - (slope * data_xy[:, axis] + intercept)
            assert np.abs(residual).max() < 1.5, f"axis {axis}: {residual}"

        screenshot = save_screenshot(driver, "report-sample-photos.png")
        assert screenshot.stat().st_size > 10_000

        # Summary: the counts and each failure with its reason.
        text = driver.find_element(By.TAG_NAME, "main").text
        record = summary(output)
        assert f"Rows read {record['rows_read']}" in text
        assert f"Embedded {record['embedded']}" in text
        assert "truncated.jpg" in text and "FileNotFoundError" in text
        assert f"Failures ({record['failed']})" in text
        # No --zero_shot_labels: nothing to colour by, so no switch.
        assert not driver.find_element(By.ID, "colour-toggle").is_displayed()
        assert console_problems(driver) == []


@pytest.mark.pipeline_run
def test_report_zooms_and_pans(mapped):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    output, _ = mapped
    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        before = np.array(_centres(driver))
        driver.find_element(By.ID, "zoom-in").click()
        zoomed = np.array(_centres(driver))
        spread = np.linalg.norm(before - before.mean(axis=0), axis=1).sum()
        zoomed_spread = np.linalg.norm(zoomed - zoomed.mean(axis=0), axis=1).sum()
        assert zoomed_spread / spread == pytest.approx(1.5, rel=1e-3)

        svg = driver.find_element(By.ID, "map")
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(svg), 0, -300).perform()
        wheeled = np.array(_centres(driver))
        wheeled_spread = np.linalg.norm(wheeled - wheeled.mean(axis=0), axis=1).sum()
        assert wheeled_spread > zoomed_spread * 1.2

        # Drag from an empty corner of the map: every point moves by the drag.
        corner = driver.execute_script(
            "const box = document.getElementById('map').getBoundingClientRect();"
            "return [box.x + 20, box.y + box.height - 20];"
        )
        ActionChains(driver).move_by_offset(*corner).click_and_hold().move_by_offset(
            80, -40
        ).release().perform()
        panned = np.array(_centres(driver))
        assert np.allclose(panned - wheeled, [80, -40], atol=1.0)

        driver.find_element(By.ID, "reset").click()
        assert np.allclose(np.array(_centres(driver)), before, atol=0.5)
        assert console_problems(driver) == []


@functools.cache
def _photo_jpegs() -> dict[str, bytes]:
    """Each photograph's JPEG thumbnail, by path, made as the load step makes them."""
    jpegs = {}
    for path in PHOTO_PATHS:
        with Image.open(path) as image:
            small = image.convert("RGB")
        small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
        jpegs[path] = buffer.getvalue()
    return jpegs


def _synthetic_points(count: int) -> tuple[list, dict, object]:
    """count points in ten overlapping clusters, each with one of the photographs' thumbnails."""
    generator = np.random.default_rng(0)
    centres = generator.normal(size=(10, 64)) * 1.5
    matrix = centres[np.arange(count) % 10] + generator.normal(size=(count, 64))
    moments = Moments()
    for row in matrix:
        moments.add(row)
    projection = principal_components(moments)
    photo_thumbnails = list(_photo_jpegs().values())
    points, thumbnails = [], {}
    for index, (x, y) in enumerate(projection.apply(matrix)):
        uri = f"gs://bucket/synthetic/{index:06d}.jpg"
        points.append((uri, float(x), float(y)))
        thumbnails[uri] = photo_thumbnails[index % len(photo_thumbnails)]
    return points, thumbnails, projection


def _record(count: int) -> dict:
    """A run's summary as render reads it: count images embedded, none failed."""
    return {
        "rows_read": count, "embedded": count, "failed": 0, "duplicates_dropped": 0,
        "skipped_existing": 0, "reconciled": True,
        "failed_by_stage": {"read": 0, "load": 0, "extract": 0, "store": 0},
        "model": "resnet50", "weights": "imagenet", "pooling": "avg", "resize": "squash",
        "embedding_shape": [64], "images_per_second": 100.0, "elapsed_seconds": 50.0,
        "started_at": "2026-11-24T00:00:00+00:00", "finished_at": "2026-11-24T00:00:50+00:00",
        "input": "gs://bucket/images.csv", "output": "gs://bucket/out",
        "outputs": {"failures": "gs://bucket/out/failures-*.jsonl"},
    }  # fmt: skip


# slow: starts Chromium of its own and draws 5,000 points (5-7 s).
@pytest.mark.slow
def test_report_with_5000_points_loads_and_responds(tmp_path):
    from selenium.webdriver.common.by import By

    points, thumbnails, projection = _synthetic_points(5000)
    page = report.render(points, thumbnails, projection, _record(5000), [], sample_rule="all")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    with chromium() as driver:
        started = time.monotonic()
        driver.get(path.as_uri())
        seconds = time.monotonic() - started
        assert driver.execute_script("return document.body.dataset.pointsDrawn") == "5000"
        # Counted in the page: find_elements would fetch 5000 element handles (a second).
        drawn = "return document.querySelectorAll('#points image.point').length"
        assert driver.execute_script(drawn) == 5000
        driver.find_element(By.ID, "zoom-in").click()
        _centres(driver)
        # Thumbnails overlap in dense clusters: hover the ones on top at spots across the map.
        on_top = driver.execute_script(
            "const box = document.getElementById('map').getBoundingClientRect(); const found = {};"
            "for (let i = 1; i < 60; i++) for (let j = 1; j < 60; j++) {"
            "  const x = Math.round(box.x + box.width * i / 60);"
            "  const y = Math.round(box.y + box.height * j / 60);"
            "  const hit = document.elementFromPoint(x, y);"
            "  if (hit && hit.classList.contains('point')) found[hit.dataset.index] = [x, y];"
            "}"
            "return Object.entries(found);"
        )
        named = set()
        for _, spot in on_top[:20]:
            hover(driver, spot)
            # The hovered thumbnail comes to the front, so the pointer is over it now.
            index = driver.execute_script(
                "return document.elementFromPoint(arguments[0], arguments[1]).dataset.index", *spot
            )
            assert driver.find_element(By.ID, "detail-uri").text == points[int(index)][0]
            named.add(index)
        assert len(named) >= 10
        save_screenshot(driver, "report-5000-synthetic.png")
        assert console_problems(driver) == []
    print(f"5000-point report: {path.stat().st_size / 2**20:.1f} MB, loaded in {seconds:.1f} s")


@pytest.mark.pipeline_run
def test_map_with_npy_output(tmp_path):
    output = tmp_path / "out"
    csv_path = write_csv(tmp_path / "images.csv", PHOTO_PATHS)
    result = run_cli(
        "--input", str(csv_path), "--output", str(output), "--output_format", "npy",
        "--weights", "random", "--map",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    coordinates = read_coordinates(output)
    expected, ratio = numpy_pca(npy_embeddings(output))
    assert_equal_up_to_sign(coordinates, expected)
    page = (output / "report.html").read_text()
    assert f"PC1 ({ratio[0]:.1%} of variance)" in page
    assert f"PC2 ({ratio[1]:.1%} of variance)" in page
    data = page.split('<script type="application/json" id="map-data">', 1)[1]
    points = json.loads(data.split("</script>", 1)[0])["points"]
    assert sorted(point["uri"] for point in points) == sorted(PHOTO_PATHS)


# Reports built in process from the photographs at chosen places: one Chromium opens them all.


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def _write_report(
    folder: Path, placed: dict[str, tuple[float, float]], labels=None, scores=None
) -> Path:
    """report.html of the photographs placed at (x, y), made by page.render; labels: each
    one's (label, score), as --zero_shot_labels gives them; scores: {head: {uri: score}},
    as --score_head gives them."""
    points = [(uri, x, y) for uri, (x, y) in placed.items()]
    record = _record(len(points))
    if labels:
        counts = collections.Counter(label for label, _ in labels.values())
        names = LabelList(tuple(sorted(counts)), "list")
        record["labels"] = describe_labels(list(counts.items()), names, "a photo of {}")
    scored = {}
    if scores:
        record["scores"] = {
            name: {
                "count": len(values),
                "mean": float(np.mean(list(values.values()))),
                "deciles": np.quantile(list(values.values()), np.linspace(0, 1, 11)).tolist(),
            }
            for name, values in scores.items()
        }
        scored = {uri: tuple(values[uri] for values in scores.values()) for uri in placed}
    projection = Projection(
        count=len(points),
        mean=np.zeros(2),
        components=np.eye(2),
        explained_variance=np.array([2.0, 1.0]),
        total_variance=3.0,
    )
    thumbnails = {uri: _photo_jpegs()[uri] for uri in placed}
    page = report.render(
        points, thumbnails, projection, record, [], "all", labels=labels, scores=scored
    )
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _photo(name: str) -> str:
    return next(path for path in PHOTO_PATHS if path.endswith("/" + name))


def _badges(driver) -> list[dict]:
    """Each stack badge's text, title and box, once the page has drawn its next frame."""
    driver.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
    return driver.execute_script(
        "return [...document.querySelectorAll('#stack-badges .stack-badge')].map(badge => {"
        "  const box = badge.getBoundingClientRect();"
        "  return {text: badge.querySelector('text').textContent,"
        "    title: badge.querySelector('title').textContent,"
        "    centre: [box.x + box.width / 2, box.y + box.height / 2]};"
        "});"
    )


_FIND_POINT = (
    "const data = JSON.parse(document.getElementById('map-data').textContent);"
    "const index = data.points.findIndex(p => p.uri === arguments[0]);"
    "const box = document.querySelector(`#points .point[data-index='${index}']`)"
    "  .getBoundingClientRect();"
)


def _corner(driver, uri: str) -> tuple[float, float]:
    """The top right corner of uri's thumbnail on the screen."""
    return driver.execute_script(_FIND_POINT + "return [box.right, box.top];", uri)


def _centre(driver, uri: str) -> tuple[int, int]:
    return driver.execute_script(
        _FIND_POINT + "return [box.x + box.width / 2, box.y + box.height / 2].map(Math.round);",
        uri,
    )


def _on_top(driver, spot) -> str:
    """The URI of the thumbnail drawn at spot, by the page's own index of it."""
    return driver.execute_script(
        "const data = JSON.parse(document.getElementById('map-data').textContent);"
        "const node = document.elementFromPoint(arguments[0], arguments[1]).closest('.point');"
        "return data.points[Number(node.dataset.index)].uri;",
        *spot,
    )


def _badge_at(driver, spot) -> bool:
    return driver.execute_script(
        "return !!document.elementFromPoint(...arguments).closest('.stack-badge')", *spot
    )


TIMES = "\u00d7"  # the badge's multiplication sign
SPREAD = {  # far apart on the map
    "astronaut.png": (-4.0, 3.0),
    "brick.png": (4.0, 3.0),
    "chelsea.png": (-4.0, -3.0),
    "horse.png": (4.0, -3.0),
}


@pytest.mark.slow  # a browser (the fast tier starts none)
def test_a_report_without_labels_or_stacked_points_has_no_switch_and_no_badge(browser, tmp_path):
    placed = {_photo(name): xy for name, xy in SPREAD.items()}
    # Close, covering each other at the full view, but 1e-4 of the span apart: zooming
    # in separates them, so they are no stack.
    placed[_photo("coffee.png")] = (0.0, 0.0)
    placed[_photo("retina.jpg")] = (8e-4, 0.0)
    browser.get(_write_report(tmp_path, placed).as_uri())
    toggle = browser.find_element("id", "colour-toggle")
    assert not toggle.is_displayed()
    assert browser.execute_script("return getComputedStyle(arguments[0]).display", toggle) == (
        "none"
    )
    assert browser.execute_script("return document.body.dataset.pointsDrawn") == "6"
    assert _badges(browser) == []
    assert console_problems(browser) == []


@pytest.mark.slow  # a browser (the fast tier starts none)
def test_with_labels_the_switch_shows_and_colours_the_dots_by_label(browser, tmp_path):
    from selenium.webdriver.common.by import By

    placed = {_photo(name): xy for name, xy in SPREAD.items()}
    labels = {
        _photo("astronaut.png"): ("person", 0.9),
        _photo("brick.png"): ("wall", 0.8),
        _photo("chelsea.png"): ("cat", 0.7),
        _photo("horse.png"): ("cat", 0.4),
    }
    browser.get(_write_report(tmp_path, placed, labels).as_uri())
    toggle = browser.find_element(By.ID, "colour-toggle")
    assert toggle.is_displayed()
    dots = browser.find_elements(By.CSS_SELECTOR, "#label-dots .label-dot")
    assert len(dots) == len(placed)
    assert not any(dot.is_displayed() for dot in dots)  # until asked for

    browser.find_element(By.ID, "colour-by-label").click()
    legend = {
        row.text: row.get_attribute("data-colour")
        for row in browser.find_elements(By.CSS_SELECTOR, "#legend div")
    }
    assert list(legend) == ["cat", "person", "wall"]  # most images first, then by name
    assert len(set(legend.values())) == 3
    for dot in dots:
        assert dot.is_displayed()
        assert dot.get_attribute("fill") == legend[dot.get_attribute("data-label")]
    assert sorted(dot.get_attribute("data-label") for dot in dots) == sorted(
        label for label, _ in labels.values()
    )

    browser.find_element(By.ID, "colour-by-label").click()
    assert not any(dot.is_displayed() for dot in dots)
    assert not browser.find_element(By.ID, "legend").is_displayed()
    assert console_problems(browser) == []


@pytest.mark.slow  # a browser (the fast tier starts none)
def test_with_scores_the_map_colours_by_a_score_and_lists_the_lowest_and_highest(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    placed = {_photo(name): xy for name, xy in SPREAD.items()}
    uris = sorted(placed)
    rng = np.random.default_rng(4)
    scores = {
        "aesthetic": dict(zip(uris, rng.normal(5, 1, len(uris)).round(4).tolist(), strict=True)),
        "nsfw": dict(zip(uris, rng.uniform(0, 1, len(uris)).round(4).tolist(), strict=True)),
    }
    labels = {uri: ("thing", 0.5) for uri in uris}
    browser.get(_write_report(tmp_path, placed, labels, scores).as_uri())
    dots = browser.find_elements(By.CSS_SELECTOR, "#score-dots .score-dot")
    assert len(dots) == len(placed)
    assert not any(dot.is_displayed() for dot in dots)  # until asked for

    choice = Select(browser.find_element(By.ID, "colour-by-score"))
    assert [option.text for option in choice.options] == ["none", "aesthetic", "nsfw"]
    for name, values in scores.items():
        choice.select_by_visible_text(name)
        assert browser.execute_script("return document.body.dataset.colourBy") == f"score:{name}"
        shown = {float(dot.get_attribute("data-score")): dot for dot in dots}
        assert sorted(shown) == sorted(values.values())
        assert all(dot.is_displayed() for dot in dots)
        ranked = [shown[value].get_attribute("fill") for value in sorted(shown)]
        assert ranked[0] == "rgb(68, 1, 84)" and ranked[-1] == "rgb(253, 231, 37)"
        legend = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#score-legend div")]
        assert legend == [f"{name} {min(values.values()):g}", f"{name} {max(values.values()):g}"]
        section = browser.find_element(By.CSS_SELECTOR, f'.score-row[data-score="{name}"]')
        for end, order in (("lowest", 1), ("highest", -1)):
            titles = [
                figure.get_attribute("title")
                for figure in section.find_elements(By.CSS_SELECTOR, f".{end} figure")
            ]
            expected = sorted(uris, key=lambda uri: (order * values[uri], uri))[:6]
            assert titles == expected, end

    # Colouring by label takes the map from the score, and back.
    browser.find_element(By.ID, "colour-by-label").click()
    assert choice.first_selected_option.text == "none"
    assert not any(dot.is_displayed() for dot in dots)
    choice.select_by_visible_text("nsfw")
    assert not browser.find_element(By.ID, "colour-by-label").is_selected()
    assert not browser.find_element(By.ID, "legend").is_displayed()
    assert console_problems(browser) == []


@pytest.mark.slow  # a browser (the fast tier starts none)
def test_thumbnails_on_one_another_get_a_badge_that_counts_them_and_cycles(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_similarity_report import click

    placed = {_photo(name): xy for name, xy in SPREAD.items()}
    three = [_photo("camera.png"), _photo("coins.png"), _photo("grass.png")]
    for uri in three:
        placed[uri] = (0.0, 0.0)
    # Equal but for rounding (1e-10 of the span): the same spot at any zoom.
    two = [_photo("coffee.png"), _photo("retina.jpg")]
    placed[two[0]] = (1.0, -1.5)
    placed[two[1]] = (1.0 + 8e-10, -1.5)
    browser.get(_write_report(tmp_path, placed).as_uri())
    badges = {badge["text"]: badge for badge in _badges(browser)}
    assert sorted(badges) == [f"{TIMES}2", f"{TIMES}3"]
    for count, members in ((3, three), (2, two)):
        badge = badges[f"{TIMES}{count}"]
        assert badge["title"].splitlines()[1:] == members
        # On the top right corner of the stack, above the thumbnails.
        assert np.allclose(badge["centre"], _corner(browser, members[-1]), atol=1.0)
        assert _badge_at(browser, [round(v) for v in badge["centre"]])
        # The one drawn last is on top, the others are out of reach of the pointer.
        assert _on_top(browser, _centre(browser, members[0])) == members[-1]

    # Clicking the badge brings each image in turn to the front and shows it.
    for expected in [*three, three[0]]:
        click(browser, [round(v) for v in badges[f"{TIMES}3"]["centre"]])
        assert browser.find_element(By.ID, "detail-uri").text == expected
        assert _on_top(browser, _centre(browser, expected)) == expected
        place = browser.find_element(By.ID, "detail-position").text
        assert place.endswith(f"{three.index(expected) + 1} of 3 images at this spot")

    # ...and so does Enter on it, for the keyboard.
    badge = browser.find_elements(By.CSS_SELECTOR, "#stack-badges .stack-badge")[1]
    assert badge.find_element(By.TAG_NAME, "text").text == f"{TIMES}2"
    for expected in two:
        badge.send_keys(Keys.ENTER)
        assert browser.find_element(By.ID, "detail-uri").text == expected
    save_screenshot(browser, "report-stacked-thumbnails.png")
    assert console_problems(browser) == []


def test_stacks_are_the_same_whatever_the_points_order():
    """Exact duplicates, ones within the tolerance (also either side of a grid cell's
    border), and none beyond it; the span is 1 on both axes."""
    placed = {
        "corner-a": (0.0, 0.0),
        "corner-b": (1.0, 1.0),
        "same-1": (0.25, 0.75),
        "same-2": (0.25, 0.75),
        "same-3": (0.25, 0.75),
        "rounding-1": (0.6, 0.4),
        "rounding-2": (0.6 + 1e-9, 0.4 - 1e-9),
        "border-1": (0.5 - 1e-12, 0.5),  # floor(x / 1e-6) is 499999 ...
        "border-2": (0.5 + 1e-12, 0.5),  # ... and 500000 here
        "chain-1": (0.1, 0.1),
        "chain-2": (0.1 + 0.9e-6, 0.1),
        "chain-3": (0.1 + 1.8e-6, 0.1),  # beyond chain-1, within chain-2
        "apart-1": (0.9, 0.2),
        "apart-2": (0.9 + 2e-6, 0.2),
        "apart-3": (0.9, 0.2 + 2e-6),
    }
    expected = sorted(
        [
            ["same-1", "same-2", "same-3"],
            ["rounding-1", "rounding-2"],
            ["border-1", "border-2"],
            ["chain-1", "chain-2", "chain-3"],
        ]
    )
    shuffler = random.Random(0)
    for _ in range(5):
        names = list(placed)
        shuffler.shuffle(names)
        points = [(name, *placed[name]) for name in names]
        found = report.stacks(points)
        assert found == sorted(found) and all(members == sorted(members) for members in found)
        assert sorted(sorted(names[i] for i in members) for members in found) == expected
    assert report.stacks([]) == [] and report.stacks([("one", 1.0, 2.0)]) == []
    assert report.stacks([("a", 3.0, 3.0), ("b", 3.0, 3.0)]) == [[0, 1]]
