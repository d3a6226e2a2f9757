"""Zero-shot labels (--zero_shot_labels): the label list read, its text embeddings computed once per
worker process, and each image's best labels by the model's own score."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from pipeline.common import ImageKey, Labels, counter
from pipeline.models.backbones import ModelSpec
from pipeline.models.text import TextTower, text_scores

MAX_LABELS = 10_000
DEFAULT_TEMPLATE = "a photo of a {}."
PLACEHOLDER = "{}"
TOP_LABELS = 5  # labels_top: this many best labels per image
# Counted each time a worker process embeds the label list: once per process.
EMBEDDED_COUNTER = "label_sets_embedded"
_LINE_END = re.compile(r"\r\n|\r|\n")


class LabelsError(ValueError):
    """--zero_shot_labels or --label_template as given cannot be used; the message says why."""


@dataclass(frozen=True)
class LabelList:
    """The labels, in the order given, each once, and where they came from."""

    labels: tuple[str, ...]
    source: str  # the file's path, or "list" for a comma-separated list


def is_labels_file(value: str) -> bool:
    """A path with a scheme (gs://), one that ends in .txt, or an existing file; anything
    else is a comma-separated list."""
    return "://" in value or value.endswith(".txt") or os.path.isfile(value)


def read_labels(value: str) -> LabelList:
    """--zero_shot_labels: a text file of one label per line (local or gs://, through Beam's
    FileSystems) or a comma-separated list; blanks around and between labels are dropped,
    a repeated label is kept once. Raises LabelsError."""
    if is_labels_file(value):
        try:
            with FileSystems.open(value) as handle:
                text = handle.read().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise LabelsError(
                f"--zero_shot_labels {value}: not UTF-8 text ({error.reason})"
            ) from error
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise LabelsError(
                f"--zero_shot_labels {value}: cannot read the file ({type(error).__name__}: "
                f"{reason[:300]}); give a text file of one label per line, or a "
                "comma-separated list"
            ) from error
        # Not str.splitlines, which also breaks at U+2028, U+0085 and form feeds: a label
        # may hold them.
        items, source = _LINE_END.split(text), value
    else:
        items, source = value.split(","), "list"
    labels = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    if not labels:
        raise LabelsError(f"--zero_shot_labels {value!r}: no labels; give at least one")
    if len(labels) > MAX_LABELS:
        raise LabelsError(
            f"--zero_shot_labels {value}: {len(labels):,} labels, more than the "
            f"{MAX_LABELS:,} a run scores every image against"
        )
    return LabelList(labels, source)


def check_template(template: str) -> None:
    """Raises LabelsError unless the template has the {} each label replaces."""
    if PLACEHOLDER not in template:
        raise LabelsError(
            f"--label_template {template!r} has no {PLACEHOLDER} for the label, as in "
            f"{DEFAULT_TEMPLATE!r}"
        )


def label_texts(labels: tuple[str, ...], template: str) -> list[str]:
    """The text each label is embedded as: the template with the label for every {}."""
    return [template.replace(PLACEHOLDER, label) for label in labels]


class LabelScorer:
    """The labels' L2-normalised text embeddings and the model's score: what a worker
    process computes once and every image is scored with."""

    def __init__(
        self, labels: tuple[str, ...], vectors: np.ndarray, head: tuple[float, float] | None
    ):
        self.labels = labels
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.head = head
        # Each label's place in text order, for ties.
        self._rank = np.empty(len(labels), dtype=np.int64)
        self._rank[np.argsort(np.array(labels, dtype=object), kind="stable")] = np.arange(
            len(labels)
        )

    @classmethod
    def embed(cls, spec: ModelSpec, labels: tuple[str, ...], template: str) -> LabelScorer:
        """Loads the model's text tower and embeds every label through the template."""
        tower = TextTower(spec)
        return cls(labels, tower.embed(label_texts(labels, template)), tower.head)

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """One image's (n_labels,) float64 scores: cosine (CLIP) or SigLIP's sigmoid."""
        return text_scores(self.vectors @ embedding.reshape(-1), self.head)

    def label(self, embedding: np.ndarray, top: int = TOP_LABELS) -> Labels:
        """The best `top` labels of one image, best first, equal scores in label order.

        One image at a time, so that its scores never depend on which images share its
        batch: a bundle that runs again gives the same labels to the bit.
        """
        scores = self.scores(embedding)
        count = min(top, len(scores))
        candidates = np.arange(len(scores))
        if len(scores) > count:
            # Every label that ties with the last one kept takes part in the ordering.
            threshold = np.partition(scores, len(scores) - count)[len(scores) - count]
            candidates = np.flatnonzero(scores >= threshold)
        order = np.lexsort((self._rank[candidates], -scores[candidates]))
        best = candidates[order][:count]
        names = tuple(self.labels[i] for i in best)
        values = tuple(float(scores[i]) for i in best)
        return Labels(names[0], values[0], names, values)


class LabelImagesFn(beam.DoFn):
    """(ImageKey, embedding) to the same with the key's labels set; the labels' text
    embeddings are computed once per worker process and shared by its threads."""

    def __init__(self, spec: ModelSpec, labels: tuple[str, ...], template: str):
        self._spec = spec
        self._labels = labels
        self._template = template
        # One handle, pickled with the DoFn: every copy in a process finds the same object.
        self._shared = shared.Shared()
        self._tag = hashlib.sha256(
            "\n".join([spec.model, spec.weights, template, *labels]).encode()
        ).hexdigest()
        self._embedded = counter(EMBEDDED_COUNTER)

    def setup(self):
        self._embedded_here = False
        self._scorer = self._shared.acquire(self._embed_labels, tag=self._tag)

    def _embed_labels(self) -> LabelScorer:
        self._embedded_here = True
        return LabelScorer.embed(self._spec, self._labels, self._template)

    def start_bundle(self):
        # Counted in a bundle: a runner reports only what a bundle's steps count.
        if self._embedded_here:
            self._embedded_here = False
            self._embedded.inc()

    def process(self, keyed: tuple[ImageKey, np.ndarray]):
        key, embedding = keyed
        yield dataclasses.replace(key, labels=self._scorer.label(embedding)), embedding


class LabelImages(beam.PTransform):
    """Each (ImageKey, embedding) with its zero-shot labels in the key."""

    def __init__(self, spec: ModelSpec, labels: tuple[str, ...], template: str):
        super().__init__()
        self._fn = LabelImagesFn(spec, labels, template)

    def expand(self, embeddings):
        return embeddings | "Score labels" >> beam.ParDo(self._fn)
