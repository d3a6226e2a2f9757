"""--zero_shot_labels through the CLI: tiny CLIP and SigLIP 2 presets with tokenizers, each
image's labels and scores against a numpy reference built from keras-hub's own text
embeddings, in Parquet, the .npy index, the Vector Search files and BigQuery; the label
list embedded once per worker process; each usage error one line before any work."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bigquery_standin import BigQueryStandIn
from cloud import PROJECT, MetadataServer, emulator_client, storage_emulator
from support import PHOTO_PATHS, npy_index, read_parquet, run_cli, summary, write_csv
from text_presets import tiny_clip, tiny_siglip
from vector_format import check_vector_search_folder

from pipeline.models import BACKBONES, DEFAULT_TEMPLATE, EMBEDDED_COUNTER, MAX_LABELS, ModelSpec
from pipeline.models.labels import LabelScorer, read_labels
from pipeline.models.text import TextTower
from pipeline.outputs.naming import datapoint_id

pytestmark = pytest.mark.pipeline_run

MODELS = {"clip": "clip_vit_base_patch16", "siglip": "siglip2_base_patch16_224"}
# Spelled with the tiny vocabularies' words (tests/text_presets.py): more than the five
# kept, so that the top five is a choice.
LABELS = ("cat", "dog", "car", "tree", "red car", "blue car", "dog at night", "the tree")
BUCKET = "labels-bucket"
DATASET = "images"


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-presets")
    return {"clip": tiny_clip(root / "clip"), "siglip": tiny_siglip(root / "siglip")}


def labels_file(folder: Path, labels=LABELS) -> Path:
    path = folder / "labels.txt"
    # Blank lines and a repeat are dropped; the order given is kept.
    path.write_text("\n".join([labels[0], "", *labels, labels[1]]) + "\n", encoding="utf-8")
    return path


def printed_summary(result) -> dict:
    return json.loads(result.stdout[: result.stdout.rindex("}") + 1])


def reference_scores(family: str, preset: Path, template: str = DEFAULT_TEMPLATE) -> np.ndarray:
    """(n_labels, d) unit text embeddings from keras-hub's own get_text_embeddings on the
    pipeline's token ids, and the score function: cosine, or for SigLIP
    sigmoid(exp(logit_scale) * cosine + logit_bias) with the backbone's loaded values."""
    import keras_hub

    line = BACKBONES[MODELS[family]]
    backbone = getattr(keras_hub.models, line.class_name).from_preset(str(preset))
    tokenizer = getattr(keras_hub.models, line.tokenizer).from_preset(str(preset))
    spec = ModelSpec.of(MODELS[family], str(preset), "avg", 0)
    tower = TextTower(spec, backbone=backbone, tokenizer=tokenizer)
    ids = tower.token_ids([template.replace("{}", label) for label in LABELS])
    texts = np.asarray(backbone.get_text_embeddings(ids), dtype=np.float64)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    if family == "clip":
        return texts, lambda cosine: cosine
    scale = np.exp(float(np.asarray(backbone.siglip_head.logit_scale)))
    bias = float(np.asarray(backbone.siglip_head.logit_bias))
    return texts, lambda cosine: 1.0 / (1.0 + np.exp(-(scale * cosine + bias)))


def expected_labels(family: str, preset: Path, embeddings: dict[str, np.ndarray]) -> dict:
    """uri -> [(label, score)] of the five best, best first, equal scores by label text."""
    texts, score = reference_scores(family, preset)
    expected = {}
    for uri, embedding in embeddings.items():
        scores = score(texts @ np.asarray(embedding, dtype=np.float64))
        ranked = sorted(range(len(LABELS)), key=lambda i: (-scores[i], LABELS[i]))[:5]
        expected[uri] = [(LABELS[i], float(scores[i])) for i in ranked]
    return expected


def assert_labels(rows: dict[str, dict], expected: dict[str, list]) -> None:
    """rows: uri -> label, label_score, labels_top, labels_top_scores, as an output holds them."""
    assert set(rows) == set(expected)
    for uri, row in rows.items():
        names = [name for name, _ in expected[uri]]
        scores = [value for _, value in expected[uri]]
        assert row["labels_top"] == names, uri
        assert row["label"] == names[0], uri
        np.testing.assert_allclose(row["labels_top_scores"], scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(row["label_score"], scores[0], rtol=1e-4, atol=1e-6)


def parquet_rows(output: Path) -> dict[str, dict]:
    table, _ = read_parquet(output)
    return {row["uri"]: row for row in table.to_pylist()}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_labels_and_scores_equal_a_numpy_reference_in_parquet_and_vector_search(
    family, presets, tmp_path
):
    output, vectors = tmp_path / "out", tmp_path / "vectors"
    names = labels_file(tmp_path)
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
        "--output", str(output), "--model", MODELS[family], "--weights", str(presets[family]),
        "--zero_shot_labels", str(names), "--vector_search_output", str(vectors), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = parquet_rows(output)
    embeddings = {uri: np.asarray(row["embedding"]) for uri, row in rows.items()}
    expected = expected_labels(family, presets[family], embeddings)
    assert_labels(rows, expected)
    schema = read_parquet(output)[0].schema
    assert schema.names[:9] == [
        "uri", "embedding", "width", "height", "datapoint_id",
        "label", "label_score", "labels_top", "labels_top_scores",
    ]  # fmt: skip
    assert schema.field("labels_top").type == pa.list_(pa.string())
    assert schema.field("labels_top_scores").type == pa.list_(pa.float32())
    if family == "siglip":  # probabilities, not cosines
        assert all(0.0 < row["label_score"] < 1.0 for row in rows.values())

    files = {str(path.relative_to(tmp_path)): path.read_bytes() for path in vectors.iterdir()}
    dimensions = len(next(iter(embeddings.values())))
    points = check_vector_search_folder(files, "vectors/", dimensions)
    assert {point["id"]: point["restricts"] for point in points.values()} == {
        datapoint_id(uri): [{"namespace": "label", "allow": [row["label"]]}]
        for uri, row in rows.items()
    }

    made = summary(output)
    counts = collections.Counter(row["label"] for row in rows.values())
    assert made["labels"] == {
        "count": len(LABELS),
        "source": str(names),
        "template": DEFAULT_TEMPLATE,
        "labelled": len(PHOTO_PATHS),
        "label_counts": dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))),
    }
    # One in-process worker: the labels were embedded once, not once per image.
    assert printed_summary(result)["metrics"][EMBEDDED_COUNTER] == 1


def test_labels_in_the_npy_index_embedded_once_per_worker_process(presets, tmp_path):
    output = tmp_path / "npy"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
        "--output", str(output), "--output_format", "npy", "--model", MODELS["clip"],
        "--weights", str(presets["clip"]), "--zero_shot_labels", ",".join(LABELS),
        "--direct_running_mode", "multi_processing", "--direct_num_workers", "2", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    index = npy_index(output)
    assert list(index[0])[:9] == [
        "uri", "file", "width", "height", "datapoint_id",
        "label", "label_score", "labels_top", "labels_top_scores",
    ]  # fmt: skip
    embeddings = {row["uri"]: np.load(output / "embeddings" / row["file"]) for row in index}
    rows = {
        row["uri"]: {
            "label": row["label"],
            "label_score": float(row["label_score"]),
            "labels_top": json.loads(row["labels_top"]),
            "labels_top_scores": json.loads(row["labels_top_scores"]),
        }
        for row in index
    }
    assert_labels(rows, expected_labels("clip", presets["clip"], embeddings))
    assert summary(output)["labels"]["source"] == "list"
    # Two worker processes, each with its threads: the labels embedded once in each.
    assert printed_summary(result)["metrics"][EMBEDDED_COUNTER] == 2


def test_a_labels_file_on_gcs_into_bigquery_columns(presets, tmp_path):
    """The labels file read through Beam's FileSystems from the emulated bucket; the
    Parquet label columns loaded with list inference, ARRAY columns for the top five."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    metadata = MetadataServer()
    try:
        with storage_emulator(BUCKET) as emulator:
            standin = BigQueryStandIn(PROJECT, [f"{PROJECT}.{DATASET}"], emulator)
            try:
                bucket = emulator_client(emulator).bucket(BUCKET)
                bucket.blob("lists/labels.txt").upload_from_filename(str(labels_file(tmp_path)))
                uris = []
                for path in PHOTO_PATHS:
                    name = f"photos/{os.path.basename(path)}"
                    bucket.blob(name).upload_from_filename(path)
                    uris.append(f"gs://{BUCKET}/{name}")
                bucket.blob("lists/photos.csv").upload_from_string("\n".join(["uri", *uris]))
                env = {
                    "STORAGE_EMULATOR_HOST": emulator,
                    **metadata.environment,
                    "BIGQUERY_EMULATOR_HOST": standin.address,
                }
                result = run_cli(
                    "--input", f"gs://{BUCKET}/lists/photos.csv",
                    "--output", f"gs://{BUCKET}/out", "--model", MODELS["siglip"],
                    "--weights", str(presets["siglip"]),
                    "--zero_shot_labels", f"gs://{BUCKET}/lists/labels.txt",
                    "--bigquery_table", f"{PROJECT}.{DATASET}.labelled", env=env,
                )  # fmt: skip
                assert result.returncode == 0, result.stderr[-3000:]
                client = bigquery.Client(
                    project=PROJECT,
                    credentials=AnonymousCredentials(),
                    client_options={"api_endpoint": standin.address},
                )
                table = client.get_table(f"{PROJECT}.{DATASET}.labelled")
                loaded = {row["uri"]: dict(row.items()) for row in client.list_rows(table)}
                tables = [
                    pq.read_table(io.BytesIO(blob.download_as_bytes()))
                    for blob in bucket.client.list_blobs(BUCKET, prefix="out/embeddings/")
                ]
                assert standin.invalid == []
            finally:
                standin.close()
    finally:
        metadata.close()
    stored = {row["uri"]: row for row in pa.concat_tables(tables).to_pylist()}
    embeddings = {uri: np.asarray(row["embedding"]) for uri, row in stored.items()}
    expected = expected_labels("siglip", presets["siglip"], embeddings)
    assert_labels(stored, expected)
    assert set(loaded) == set(stored)
    for uri, row in loaded.items():
        for column in ("label", "labels_top"):
            assert row[column] == stored[uri][column], column
        # float32 in Parquet, FLOAT64 in BigQuery: the same numbers, exactly.
        assert row["label_score"] == float(np.float32(stored[uri]["label_score"]))
        assert row["labels_top_scores"] == [
            float(np.float32(value)) for value in stored[uri]["labels_top_scores"]
        ]
    kinds = {field.name: (field.field_type, field.mode) for field in table.schema}
    assert {name: kinds[name] for name in expected_label_columns()} == expected_label_columns()


def expected_label_columns() -> dict[str, tuple[str, str]]:
    return {
        "label": ("STRING", "NULLABLE"),
        "label_score": ("FLOAT", "NULLABLE"),
        "labels_top": ("STRING", "REPEATED"),
        "labels_top_scores": ("FLOAT", "REPEATED"),
    }


def many_labels_file(folder: Path) -> str:
    path = folder / "many.txt"
    path.write_text("\n".join(f"label {i}" for i in range(MAX_LABELS + 1)))
    return str(path)


USAGE_ERRORS = [
    (["--model", "dinov2_small"], "--zero_shot_labels needs a model with a text tower ("),
    (["--model", "resnet50"], "resnet50 has none"),
    (["--weights", "random"], "--zero_shot_labels with --weights random: a model built from"),
    (["--zero_shot_labels", " , ,"], "--zero_shot_labels ' , ,': no labels; give at least one"),
    (["--label_template", "a photo of a cat"], "--label_template 'a photo of a cat' has no {}"),
    (["--keep_columns", "label"], "--keep_columns: 'label' would clash with the output's own"),
    (["--zero_shot_labels", "{missing}"], "cannot read the file"),
    (["--zero_shot_labels", "{many}"], f"{MAX_LABELS + 1:,} labels, more than the {MAX_LABELS:,}"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_each_labels_usage_error_is_one_line_before_any_work(args, message, presets, tmp_path):
    given = {"--model": MODELS["clip"], "--weights": str(presets["clip"]),
             "--zero_shot_labels": "cat,dog"}  # fmt: skip
    extra = []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        value = value.format(missing=tmp_path / "missing.txt", many=many_labels_file(tmp_path))
        if flag in given:
            given[flag] = value
        else:
            extra += [flag, value]
    output = tmp_path / "out"
    photos = tmp_path / "photos.csv"
    with open(photos, "w", newline="") as handle:
        csv.writer(handle).writerows([["uri", "label"], *([path, "x"] for path in PHOTO_PATHS)])
    result = run_cli(
        "--input", str(photos), "--output", str(output),
        *(item for pair in given.items() for item in pair), *extra,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and message in line, line
    assert not output.exists()  # checked before the output was made


def test_ties_go_to_the_label_first_in_text_order_also_at_the_cut():
    labels = ("zebra", "apple", "mango", "kiwi", "fig", "date", "lime")
    # Unit text vectors: zebra = apple, mango = kiwi, fig = date (tied at the fifth place).
    vectors = np.array(
        [[1, 0, 0], [1, 0, 0], [0.6, 0.8, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]],
        dtype=np.float32,
    )
    image = np.array([0.8, 0.6, 0.0], dtype=np.float32)
    found = LabelScorer(labels, vectors, None).label(image)
    assert found.top == ("kiwi", "mango", "apple", "zebra", "date")
    assert (found.label, found.score) == ("kiwi", found.top_scores[0])
    np.testing.assert_allclose(found.top_scores, [0.96, 0.96, 0.8, 0.8, 0.6], rtol=1e-6)
    # SigLIP's head: the same order (the sigmoid is monotonic), probabilities as scores.
    scale, bias = 10.0, -5.0
    siglip = LabelScorer(labels, vectors, (scale, bias)).label(image)
    assert siglip.top == found.top
    expected = 1 / (1 + np.exp(-(scale * np.array([0.96, 0.96, 0.8, 0.8, 0.6]) + bias)))
    np.testing.assert_allclose(siglip.top_scores, expected, rtol=1e-6)
    # Fewer labels than five: every one, best first.
    few = LabelScorer(("b", "a"), vectors[:2], None).label(image)
    assert few.top == ("a", "b") and len(few.top_scores) == 2


def test_a_labels_list_or_file_drops_blanks_and_repeats_in_the_order_given(tmp_path):
    assert read_labels(" cat , dog,,cat, red car ").labels == ("cat", "dog", "red car")
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffZürich\r\n\r\ncat\n  dog  \ncat\n".encode())
    found = read_labels(str(path))
    assert (found.labels, found.source) == (("Zürich", "cat", "dog"), str(path))
    assert read_labels("a,b").source == "list"


def test_a_labels_file_is_split_only_at_line_ends_not_at_other_unicode_breaks(tmp_path):
    """U+2028, U+0085 and a form feed are characters of a label, as any text editor
    shows them; only \\n, \\r\\n and \\r end a line."""
    labels = ("line\u2028separator", "next\u0085line", "form\ffeed")
    path = tmp_path / "labels.txt"
    path.write_bytes((labels[0] + "\r\n" + labels[1] + "\r" + labels[2] + "\n").encode())
    assert read_labels(str(path)).labels == labels
    path.write_bytes(b"cat\r\ndog\r\n\r\nred car\r")
    assert read_labels(str(path)).labels == ("cat", "dog", "red car")


def test_report_shows_each_labels_images_and_colours_the_map_in_chromium(presets, tmp_path):
    """report.html with --map: the Labels section's counts and thumbnails are the Parquet
    rows', and the map's dots take each label's legend colour once asked to."""
    from browser import chromium, console_problems, save_screenshot
    from selenium.webdriver.common.by import By

    output = tmp_path / "out"
    result = run_cli(
        "--input", str(write_csv(tmp_path / "photos.csv", PHOTO_PATHS)),
        "--output", str(output), "--model", MODELS["clip"], "--weights", str(presets["clip"]),
        "--zero_shot_labels", ",".join(LABELS), "--map",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = parquet_rows(output)
    counts = summary(output)["labels"]["label_counts"]
    with chromium() as driver:
        driver.get((output / "report.html").as_uri())
        table = driver.find_element(By.CSS_SELECTOR, "table.label-counts")
        cells = [
            row.find_elements(By.TAG_NAME, "td")
            for row in table.find_elements(By.TAG_NAME, "tr")[1:]
        ]
        assert [(label.text, int(count.text)) for label, count in cells] == list(counts.items())
        for section in driver.find_elements(By.CSS_SELECTOR, ".label-row"):
            label = section.get_attribute("data-label")
            figures = section.find_elements(By.TAG_NAME, "figure")
            assert 0 < len(figures) <= min(6, counts[label])
            for figure in figures:
                assert rows[figure.get_attribute("title")]["label"] == label
                assert figure.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0"

        dots = driver.find_elements(By.CSS_SELECTOR, "#label-dots .label-dot")
        assert len(dots) == len(PHOTO_PATHS)
        assert not any(dot.is_displayed() for dot in dots)  # until asked for
        driver.find_element(By.ID, "colour-by-label").click()
        assert driver.execute_script("return document.body.dataset.colourBy") == "label"
        legend = {
            row.text: row.get_attribute("data-colour")
            for row in driver.find_elements(By.CSS_SELECTOR, "#legend div")
        }
        assert list(legend) == list(counts)  # fewer than ten labels: one colour each
        assert len(set(legend.values())) == len(legend)
        for dot in dots:
            assert dot.is_displayed()
            assert dot.get_attribute("fill") == legend[dot.get_attribute("data-label")]
        drawn = collections.Counter(dot.get_attribute("data-label") for dot in dots)
        assert dict(drawn) == counts
        # The panel names a point's label and score.
        driver.execute_script(
            "document.querySelector('#points .point').dispatchEvent("
            "new PointerEvent('pointermove', {bubbles: true}))"
        )
        uri = driver.find_element(By.ID, "detail-uri").text
        shown = driver.find_element(By.ID, "detail-label").text
        assert shown == f"label: {rows[uri]['label']} ({rows[uri]['label_score']:.4f})"
        assert save_screenshot(driver, "report-labels.png").stat().st_size > 10_000
        assert console_problems(driver) == []
