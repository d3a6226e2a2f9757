"""Every flag of the pipeline, declared once, a group per feature.

Each declaration holds the flag's one text, from which `--help`, its row in
docs/options.md and its field on the Flex Template's Console form (metadata.json) are
all written (pipeline/options/describe.py writes the last two), and the values the flag
takes, which parsing.validate checks.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pipeline.inputs import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from pipeline.models import (
    BACKBONES,
    CALIBRATION_IMAGES,
    DEFAULT_TEMPLATE,
    ENGINES,
    MAX_LABELS,
    PRECISIONS,
    TOP_LABELS,
)
from pipeline.outputs import FORMATS, RUN_ID_PATTERN

OUTPUT_FORMATS = tuple(FORMATS)
POOLINGS = ("avg", "max", "none")
RESIZE_POLICIES = ("squash", "center_crop")

MAX_NEIGHBORS = 100
DEFAULT_CELL_SIZE = 200
DEFAULT_CELLS_PER_IMAGE = 3
MAX_CELLS_PER_IMAGE = 16
# How http(s) URIs are fetched, per worker process (docs/input.md, "Fetching").
DEFAULT_CONNECTIONS_PER_HOST = 2
DEFAULT_REQUESTS_PER_SECOND = 5.0
DEFAULT_FETCH_DEADLINE = 60.0
# Failures a run may always have, whatever its size: a person's first short list with a
# typo in it still publishes (docs/outputs.md, "Failures and the summary").
DEFAULT_MAX_FAILURES = 3
# Dataflow batch jobs of millions of images can run for a day; a lease twice that old is
# a crashed run's.
LEASE_STALE_AFTER_HOURS = 48

# Form regexes shared by several parameters.
_NATURAL = "^[0-9]+$"
_POSITIVE = "^[1-9][0-9]*$"
_FRACTION = r"^(0(\.[0-9]+)?|1(\.0+)?)$"
_POSITIVE_DECIMAL = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]*\.[0-9]*[1-9][0-9]*)$"
_GCS_FOLDER = "^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](/.*)?$"


def parse_bool(value: str | bool) -> bool:
    """Reads true/false the way Flex Template parameters and shells spell them."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _JoinRepeats(argparse.Action):
    """A flag given more than once keeps every value, comma-separated, as one value
    with commas does (a Flex Template parameter is given once)."""

    def __call__(self, parser, namespace, values, option_string=None):
        earlier = getattr(namespace, self.dest, "")
        setattr(namespace, self.dest, f"{earlier},{values}" if earlier else values)


@dataclass(frozen=True)
class Limits:
    """The numbers a flag takes: from `low` to `high` (no upper end when None).

    A value outside is refused as "--flag must be ..., got VALUE", the range said from
    these fields; `low_means` and `high_means` say what an end stands for ("0 (none)").
    """

    low: float
    high: float | None = None
    low_means: str = ""
    high_means: str = ""
    positive: bool = False  # low (0) itself is refused too: "must be positive"

    def holds(self, value: float) -> bool:
        above = value > self.low if self.positive else value >= self.low
        return above and (self.high is None or value <= self.high)

    def described(self) -> str:
        """What the refusal says a value must be."""
        if self.positive:
            return "positive"
        low = _end(self.low, self.low_means)
        if self.high is not None:
            return f"between {low} and {_end(self.high, self.high_means)}"
        return f"{low} or more" if self.low_means else f"at least {low}"


def _end(value: float, means: str) -> str:
    return f"{value} ({means})" if means else f"{value}"


POSITIVE = Limits(0, positive=True)


@dataclass(frozen=True)
class Matches:
    """The form a text flag's value takes, when given: `regex`, whole. Another value is
    refused as "--flag 'VALUE' " followed by `refusal`."""

    regex: str
    refusal: str


class See(NamedTuple):
    """Where the docs say more about a flag: a heading's title and its docs/ link."""

    title: str
    target: str  # relative to docs/: "input.md#decoding"

    @property
    def where(self) -> str:
        """The place as --help says it: "Decoding in docs/input.md", or a whole page."""
        page, anchored, _ = self.target.partition("#")
        return f"{self.title} in docs/{page}" if anchored else f"docs/{page}"


@dataclass(frozen=True)
class Form:
    """A parameter's field on the Flex Template's Console form (a metadata.json entry).

    Its name, help text, whether it is optional, its default and its enum values follow
    from the flag, and so does its type unless `type` names one (and a boolean's regex);
    the rest is said here.
    """

    label: str
    group: str  # the form's section (groupName)
    example: str  # the help text ends with "For example, EXAMPLE": the tests launch with it
    regexes: tuple[str, ...] = ()
    type: str = ""  # paramType where the flag's own type does not tell it
    enum: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # value: label, description


@dataclass(frozen=True)
class Option:
    """One flag: how it is read, the values it takes, its one text and its form field.

    `help` is the flag's one text, written for all three of its readers: --help prints it
    without Markdown and with its default, docs/options.md as it is, and the Console form
    with each `--flag value` spelled as the form sets it (describe.py). So it is plain
    text with `code` in backticks, and names other flags as `--flag`.

    A bool default makes a boolean flag (true/false/1/0/yes/no; alone, it means true);
    default None makes a required one, and `required` says what it takes. choices,
    limits and matches are checked by options.validate (through `refusal`), so that a
    wrong value is a UsageError like every other.
    """

    name: str
    help: str
    form: Form
    default: str | int | float | bool | None = None
    type: Callable[[str], object] | None = None
    choices: tuple[str, ...] = ()
    limits: Limits | None = None
    matches: Matches | None = None
    required: str = ""  # what a required flag takes, said when it is missing
    see: See | None = None
    repeatable: bool = False  # given more than once, the values join, comma-separated

    def __post_init__(self) -> None:
        if bool(self.required) != (self.default is None):
            raise ValueError(f"{self.flag}: a flag has a default or says what it requires")

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def boolean(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def plain(self) -> str:
        """The one text without its Markdown."""
        return self.help.replace("`", "")

    def refusal(self, value: Any) -> str | None:
        """Why the flag does not take value, as the UsageError says it; None if it does."""
        if self.required and not value:
            return f"{self.flag} is required: {self.required}"
        if self.choices and value not in self.choices:
            return f"{self.flag}: {value!r} is not one of {', '.join(self.choices)}"
        if self.limits and not self.limits.holds(value):
            return f"{self.flag} must be {self.limits.described()}, got {value}"
        matches = self.matches
        if matches and value and not re.fullmatch(matches.regex, str(value)):
            return f"{self.flag} {value!r} {matches.refusal}"
        return None

    def help_line(self) -> str:
        """What --help prints: the text, where the docs say more, and the default."""
        text = self.plain.replace("%", "%%")  # argparse formats help with %
        if self.see:
            text += f" See {self.see.where}."
        if self.default is None:
            return f"{text} Required."
        shown = "none" if self.default == "" else "%(default)s"
        return f"{text} (default: {shown})"

    def argparse_kwargs(self) -> dict:
        """What ArgumentParser.add_argument takes for this flag, besides its name."""
        if self.boolean:
            return {
                "type": parse_bool,
                "nargs": "?",
                "const": True,
                "default": self.default,
                "help": self.help_line(),
            }
        kwargs: dict = {"help": self.help_line()}
        if self.repeatable:
            kwargs["action"] = _JoinRepeats
        if self.default is not None:
            kwargs["default"] = self.default
        if self.type is not None:
            kwargs["type"] = self.type
        return kwargs


@dataclass(frozen=True)
class Group:
    """The flags of one feature: an argument group of --help, a section of docs/options.md."""

    title: str
    description: str
    options: tuple[Option, ...]


INPUT = Group(
    "Input",
    "What to read, and how each image is decoded and resized for the model.",
    (
        Option(
            "input",
            required="a CSV of image URIs, a Parquet manifest, a glob of images or of shards",
            help="A CSV or text file of image URIs: local paths, `gs://` or `http(s)://` (in "
            "a CSV with a header, the `--uri_column`; otherwise the first column); a Parquet "
            "manifest (a `.parquet` file, a folder of them or a glob ending `.parquet`); a "
            "glob of images such as `gs://bucket/photos/**.jpg`; or WebDataset shards (a "
            "glob such as `gs://bucket/shards/*.tar`, or a list of them), whose image "
            "members are read as `SHARD.tar#MEMBER`.",
            see=See("Input", "input.md#input"),
            form=Form(
                "Image list or pattern",
                "Input and output",
                "gs://my-bucket/lists/photos.csv or gs://my-bucket/photos/**.jpg",
                ("^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$",),
            ),
        ),
        Option(
            "uri_column",
            default="",
            help="The column of a CSV with a header, or of a Parquet manifest, that holds "
            "each image's URI; by default `uri`, else `url`, else (a CSV) the first.",
            see=See("Input", "input.md#input"),
            form=Form("URI column", "Input and output", "url", ("^[^,]+$",)),
        ),
        Option(
            "resize",
            default="squash",
            choices=RESIZE_POLICIES,
            help="`squash` stretches the whole image to the model's input size; "
            "`center_crop` keeps the aspect ratio and crops the largest centred square.",
            see=See("Decoding", "input.md#decoding"),
            form=Form(
                "Resize policy",
                "Images",
                "squash",
                enum={
                    "squash": ("Squash", "Stretch the whole image"),
                    "center_crop": ("Centre crop", "Keep the aspect ratio, crop the centre"),
                },
            ),
        ),
        Option(
            "jpeg_draft",
            default=True,
            help="Let the JPEG decoder scale large images down by 2, 4 or 8 while decoding: "
            "about 4x faster, with a mean difference under 0.5 grey levels.",
            see=See("Decoding", "input.md#decoding"),
            form=Form("Fast JPEG decoding", "Images", "true"),
        ),
        Option(
            "max_image_pixels",
            type=int,
            default=DEFAULT_MAX_IMAGE_PIXELS,
            limits=POSITIVE,
            help="Images with more pixels are refused as decompression bombs and listed in "
            "the dead letter.",
            form=Form("Pixel limit", "Images", "100000000", (_POSITIVE,)),
        ),
        Option(
            "max_image_bytes",
            type=int,
            default=DEFAULT_MAX_IMAGE_BYTES,
            limits=POSITIVE,
            help="Image files larger than this many bytes (64 MiB by default) are not read, "
            "and are listed in the dead letter as `ImageTooLargeError`.",
            see=See("Decoding", "input.md#decoding"),
            form=Form("File size limit", "Images", "67108864", (_POSITIVE,)),
        ),
    ),
)

MODEL = Group(
    "Model",
    "Which network embeds the images, with which weights, pooled how.",
    (
        Option(
            "model",
            default="resnet50",
            choices=tuple(BACKBONES),
            help=f"The model: {', '.join(f'`{name}`' for name in BACKBONES)} "
            "(keras.applications ImageNet classifiers; keras-hub CLIP, SigLIP 2 and DINOv2 "
            "presets, by their preset names).",
            see=See("Models", "models.md#models"),
            form=Form(
                "Model",
                "Model",
                "resnet50 or clip_vit_base_patch16",
                enum={
                    name: (backbone.class_name, f"{backbone.embedding_size} features")
                    for name, backbone in BACKBONES.items()
                },
            ),
        ),
        Option(
            "weights",
            default="pretrained",
            help="`pretrained` (the model's published weights: downloaded and cached, or "
            "built into the container image for `resnet50` and the models of its `PRESETS` "
            "build argument; `imagenet` is the same for the keras.applications models), "
            "`random` (seeded, untrained: smoke tests only), a Keras weights file saved from "
            "the same keras.applications model without its top, or a keras-hub preset folder "
            "(CLIP, SigLIP 2, DINOv2), local or `gs://`.",
            see=See("Weights", "models.md#weights"),
            form=Form(
                "Weights",
                "Model",
                "gs://my-bucket/models/resnet50_notop.weights.h5",
                (r"^(pretrained|imagenet|random|gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+)$",),
            ),
        ),
        Option(
            "seed",
            type=int,
            default=0,
            help="Seed for `--weights random`, the `--map` report's sample and the "
            "similarity search's cells.",
            form=Form("Random weights seed", "Model", "0", (_NATURAL,)),
        ),
        Option(
            "pooling",
            default="avg",
            choices=POOLINGS,
            help="How the last feature map becomes the embedding: `avg` or `max` (global "
            "average or max pooling) give one vector per image; `none` keeps the whole map "
            "(7x7x2048 for ResNet50).",
            form=Form(
                "Pooling",
                "Model",
                "avg",
                enum={
                    "avg": ("Average", "Global average pooling"),
                    "max": ("Maximum", "Global max pooling"),
                    "none": ("None", "The whole feature map"),
                },
            ),
        ),
    ),
)

_TEXT_MODELS = ", ".join(f"`{name}`" for name, line in BACKBONES.items() if line.text_tower)

ENGINE = Group(
    "Engine",
    "What runs the model on each worker, and in which precision (see docs/engine.md).",
    (
        Option(
            "engine",
            default="auto",
            choices=ENGINES,
            help="`auto`: TensorFlow where the worker sees a GPU, otherwise OpenVINO on the "
            "CPU (falling back to TensorFlow, logged and counted, where OpenVINO cannot "
            "convert the model); `tensorflow`: the Keras model as it is; `openvino`: the same "
            "Keras model converted by OpenVINO, failing the job if it cannot run.",
            see=See("Engine", "engine.md"),
            form=Form(
                "Engine",
                "Performance",
                "auto",
                enum={
                    "auto": ("Automatic", "TensorFlow with a GPU, OpenVINO on the CPU"),
                    "tensorflow": ("TensorFlow", "The Keras model as it is"),
                    "openvino": ("OpenVINO", "The Keras model converted for the CPU"),
                },
            ),
        ),
        Option(
            "precision",
            default="auto",
            choices=PRECISIONS,
            help="`auto`: bfloat16 on OpenVINO where the worker's CPU runs it faster (AMX, or "
            "an AMD CPU with AVX512_BF16), mixed float16 on TensorFlow with a GPU of compute "
            "capability 7.0 or more (tensor cores), float32 elsewhere; `float32`; `bfloat16` "
            "(OpenVINO only, on a CPU with AVX512_BF16 or AMX; about 2x float32's speed on "
            "an AMD EPYC, 0.6-0.7x on an Intel CPU without AMX; cosine to float32 above "
            "0.999); "
            "`int8` (OpenVINO only, never chosen by auto: the model quantised by NNCF on the "
            f"input's first {CALIBRATION_IMAGES} images in each worker process, 1.5-1.8x "
            "bfloat16's speed, recall@10 against float32 about 0.95). bfloat16 and int8 need "
            "`--engine openvino` or `auto`. `--skip_existing` refuses to mix runs asked for "
            "different precisions, or int8 runs calibrated on other images.",
            see=See("Engine", "engine.md"),
            form=Form(
                "Precision",
                "Performance",
                "auto",
                enum={
                    "auto": ("Automatic", "bfloat16 or float16 where the hardware makes it faster"),
                    "float32": ("float32", "Full precision on every engine"),
                    "bfloat16": ("bfloat16", "OpenVINO on a CPU with AVX512_BF16 or AMX"),
                    "int8": ("int8", "OpenVINO, quantised on the input's first images"),
                },
            ),
        ),
    ),
)

LABELS = Group(
    "Labels and scores",
    "Each image's most similar labels by the text tower of a CLIP or SigLIP 2 model, and "
    "its scores from heads on its embedding.",
    (
        Option(
            "zero_shot_labels",
            default="",
            help="Zero-shot labels: a comma-separated list, or a text file of one label per "
            "line (local or `gs://`; a path ending in `.txt`, or an existing file), at most "
            f"{MAX_LABELS:,}. Each image gets its most similar label, its score and its best "
            f"{TOP_LABELS} in every output. Needs a model with a text tower, CLIP or SigLIP 2 "
            f"({_TEXT_MODELS}), and its vocabulary (not `--weights random`).",
            see=See("Labels", "labels.md"),
            form=Form(
                "Zero-shot labels",
                "Labels",
                "gs://my-bucket/labels/products.txt",
                (r"^.*[^,\s].*$",),
            ),
        ),
        Option(
            "label_template",
            default=DEFAULT_TEMPLATE,
            help="The text each label is embedded as, `{}` standing for the label (the "
            "default is CLIP's own prompt).",
            form=Form("Label template", "Labels", "{}", (r"^.*\{\}.*$",)),
        ),
        Option(
            "score_head",
            default="",
            repeatable=True,
            help="A score head, `NAME=PATH`: a safetensors file (local or `gs://`) of dense "
            "layers that turns each embedding into one score, written as the float column "
            "NAME in every output (an aesthetic or NSFW score). Give the flag once per head, "
            "or several heads comma-separated. The head must name this run's `--model` and "
            "take its embedding size.",
            see=See("Scores", "scores.md"),
            form=Form(
                "Score heads",
                "Labels",
                "aesthetic=gs://my-bucket/heads/aesthetic.safetensors",
                (r"^[a-z_][a-z0-9_]*=[^,]+(,[a-z_][a-z0-9_]*=[^,]+)*$",),
            ),
        ),
    ),
)

OUTPUTS = Group(
    "Outputs",
    "Where the embeddings, the dead letter and the summary go, and in which files.",
    (
        Option(
            "output",
            required="a directory or gs:// prefix",
            help="Local directory or `gs://` prefix for the embeddings, the dead letter, "
            "`summary.json` and every other output.",
            see=See("Outputs", "outputs.md"),
            form=Form(
                "Output prefix",
                "Input and output",
                "gs://my-bucket/embeddings/2026-11-24",
                (_GCS_FOLDER,),
                type="GCS_WRITE_FOLDER",
            ),
        ),
        Option(
            "output_format",
            default="parquet",
            choices=OUTPUT_FORMATS,
            help="`parquet`: sharded Parquet files with `uri`, `embedding`, `width` and "
            "`height` columns; `npy`: one `.npy` file per image plus an index CSV.",
            see=See("Files and formats", "outputs.md#files-and-formats"),
            form=Form(
                "Output format",
                "Input and output",
                "parquet",
                enum={
                    "parquet": ("Parquet", "Sharded Parquet files"),
                    "npy": ("NumPy .npy", "One .npy per image, with an index CSV"),
                },
            ),
        ),
        Option(
            "num_shards",
            type=int,
            default=0,
            limits=Limits(0, low_means="runner decides"),
            help="Number of Parquet or index files; `0` lets the runner (Dataflow) decide.",
            form=Form("Output shards", "Input and output", "0", (_NATURAL,)),
        ),
        Option(
            "skip_existing",
            default=False,
            help="Skip images whose embeddings are already under the output (from the "
            "Parquet `uri` column or the `.npy` index) and add the new ones beside them "
            "instead of replacing them: for scheduled runs over a growing list.",
            see=See("Incremental runs", "outputs.md#incremental-runs"),
            form=Form("Skip images already embedded", "Input and output", "true"),
        ),
    ),
)

REPORT = Group(
    "Map and report",
    "A 2-D map of the embeddings and an HTML page of their thumbnails.",
    (
        Option(
            "map",
            default=False,
            help="Also project the embeddings to 2-D by PCA and write "
            "`map-coordinates-*.csv`, `map.png` and `report.html` (a self-contained page of "
            "image thumbnails you can zoom, pan and hover, beside the run summary).",
            see=See("Map and report", "report.md"),
            form=Form("Map and report", "Map", "true"),
        ),
        Option(
            "map_sample_size",
            type=int,
            default=5000,
            limits=Limits(1),
            help="Most points `map.png` and `report.html` draw; larger runs show a seeded "
            "sample, while the coordinates file holds every image.",
            see=See("The sample", "report.md#the-sample"),
            form=Form("Points drawn in the map and report", "Map", "5000", (_POSITIVE,)),
        ),
    ),
)

SIMILARITY = Group(
    "Similarity",
    "Every image's nearest neighbours, groups of near-duplicates, and matches in another output.",
    (
        Option(
            "neighbors",
            type=int,
            default=0,
            limits=Limits(0, MAX_NEIGHBORS, low_means="none"),
            help="Find every image's K most similar other images (cosine similarity of the "
            "mean-centred embeddings, over every image under the output) and write "
            f"`neighbors-*.parquet`; `0` for none, at most {MAX_NEIGHBORS}.",
            see=See("Similarity", "similarity.md"),
            form=Form(
                "Nearest neighbours per image",
                "Similarity",
                "10",
                ("^([0-9]|[1-9][0-9]|100)$",),
            ),
        ),
        Option(
            "duplicate_threshold",
            type=float,
            default=0,
            limits=Limits(0, 1, low_means="none", high_means="a cosine similarity"),
            help="Group images joined by similarities at or above this value (such as 0.95) "
            "into near-duplicate groups in `duplicates-*.csv`, and mark every member but a "
            "group's representative `keep` false; `0` for none.",
            see=See("Similarity", "similarity.md"),
            form=Form("Near-duplicate threshold", "Similarity", "0.95", (_FRACTION,)),
        ),
        Option(
            "similarity_cell_size",
            type=int,
            default=DEFAULT_CELL_SIZE,
            limits=Limits(2),
            help="Images per cell of the partitioned search for `--neighbors` and "
            "`--duplicate_threshold`; up to this many images the search is exact. Larger: "
            "better recall, slower.",
            see=See("Recall and time", "similarity.md#recall-and-time"),
            form=Form("Images per search cell", "Similarity", "200", ("^([2-9]|[1-9][0-9]+)$",)),
        ),
        Option(
            "similarity_cells_per_image",
            type=int,
            default=DEFAULT_CELLS_PER_IMAGE,
            limits=Limits(1, MAX_CELLS_PER_IMAGE),
            help="How many of its most similar cells each image joins. More: better "
            "recall, slower (time grows as its square).",
            see=See("Recall and time", "similarity.md#recall-and-time"),
            form=Form("Cells each image joins", "Similarity", "3", ("^([1-9]|1[0-6])$",)),
        ),
        Option(
            "compare_with",
            default="",
            help="An earlier output of this pipeline (a folder or `gs://` prefix, such as an "
            "evaluation set's), made with the same model, weights, pooling, resize and "
            "precision: every image under the output gets its nearest images there; "
            "those at or above `--compare_threshold` go to `matches-*.parquet`, and an image "
            "with a match is marked `keep` false.",
            see=See("Against another collection", "similarity.md#against-another-collection"),
            form=Form(
                "Compare with another output",
                "Similarity",
                "gs://my-bucket/embeddings/evaluation",
                (_GCS_FOLDER,),
                type="GCS_READ_FOLDER",
            ),
        ),
        Option(
            "compare_threshold",
            type=float,
            default=0,
            limits=Limits(
                0, 1, low_means="--duplicate_threshold's", high_means="a cosine similarity"
            ),
            help="The similarity at or above which an image of `--compare_with` is a match; "
            "`0` takes `--duplicate_threshold`, and `--compare_with` needs one of the two.",
            see=See("Against another collection", "similarity.md#against-another-collection"),
            form=Form(
                "Match threshold against the other output", "Similarity", "0.95", (_FRACTION,)
            ),
        ),
        Option(
            "compare_matches",
            type=int,
            default=1,
            limits=Limits(1, MAX_NEIGHBORS),
            help="Most matches in `--compare_with` kept per image, most similar first, at "
            f"most {MAX_NEIGHBORS}.",
            see=See("Against another collection", "similarity.md#against-another-collection"),
            form=Form(
                "Matches per image",
                "Similarity",
                "1",
                ("^([1-9]|[1-9][0-9]|100)$",),
            ),
        ),
    ),
)

DESTINATIONS = Group(
    "Destinations",
    "The input's own columns carried along, BigQuery and Vertex AI Vector Search.",
    (
        Option(
            "keep_columns",
            default="",
            help="Comma-separated columns of the input CSV's header or Parquet manifest to "
            "keep with each image: string columns in the Parquet output, the `.npy` index and "
            "BigQuery, and restricts in the Vector Search files. For WebDataset shards, the "
            "extensions of the sibling members to keep (`txt,json`).",
            see=See("Your columns", "destinations.md#your-columns"),
            form=Form("Input columns to keep", "Destinations", "label,sku", ("^[^,]+(,[^,]+)*$",)),
        ),
        Option(
            "vector_search_output",
            default="",
            help="A folder of its own (`gs://` or local, like the output) to "
            "write this run's embeddings to as Vertex AI Vector Search input: "
            "`vectors-*.json`, with the kept columns as restricts, ready for "
            "`gcloud ai indexes create` or `update`.",
            see=See("Vertex AI Vector Search", "destinations.md#vertex-ai-vector-search"),
            form=Form(
                "Vector Search input folder",
                "Destinations",
                "gs://my-bucket/vector-search/products",
                (_GCS_FOLDER,),
                type="GCS_WRITE_FOLDER",
            ),
        ),
        Option(
            "vector_search_crowding_column",
            default="",
            help="One of the kept columns, whose value becomes each datapoint's "
            "`crowding_tag` in `--vector_search_output`.",
            form=Form("Vector Search crowding column", "Destinations", "sku", ("^[^,]+$",)),
        ),
        Option(
            "bigquery_table",
            default="",
            help="`PROJECT.DATASET.TABLE` to load the Parquet embeddings into with one load "
            "job once they are written (created if missing; a re-run replaces its rows, "
            "`--skip_existing` appends). The dataset must exist, and the output must be on "
            "`gs://`.",
            see=See("BigQuery", "destinations.md#bigquery"),
            form=Form(
                "BigQuery table",
                "Destinations",
                "my-project.images.embeddings",
                (r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]*[a-z0-9]\.[A-Za-z0-9_]+\.[^.`]+$",),
            ),
        ),
        Option(
            "bigquery_vector_index",
            default=False,
            help="Also create an IVF vector index (cosine distance) on the table's embedding "
            "column once the table holds the 10 MB BigQuery needs for one.",
            form=Form("BigQuery vector index", "Destinations", "true"),
        ),
    ),
)

RUN = Group(
    "Run",
    "Batches given to the model, the failure budget, and the lease a run holds on its output.",
    (
        Option(
            "min_batch_size",
            type=int,
            default=8,
            help="Smallest batch given to the model.",
            form=Form("Minimum batch size", "Performance", "8", (_NATURAL,)),
        ),
        Option(
            "max_batch_size",
            type=int,
            default=32,
            help="Largest batch given to the model.",
            form=Form("Maximum batch size", "Performance", "32", (_NATURAL,)),
        ),
        Option(
            "max_failure_fraction",
            type=float,
            default=0.05,
            limits=Limits(0, 1),
            help="The run fails when more than this fraction of its unique URIs cannot be "
            "embedded.",
            see=See("Failures and the summary", "outputs.md#failures-and-the-summary"),
            form=Form("Failure budget", "Input and output", "0.05", (_FRACTION,)),
        ),
        Option(
            "max_failures",
            type=int,
            default=DEFAULT_MAX_FAILURES,
            limits=Limits(0),
            help="The run fails only when more than this many URIs cannot be embedded as "
            "well as more than `--max_failure_fraction` of them, so that one typo in a "
            "short list does not fail it; a run that embeds nothing fails regardless.",
            see=See("Failures and the summary", "outputs.md#failures-and-the-summary"),
            form=Form("Failures always allowed", "Input and output", "3", (_NATURAL,)),
        ),
        Option(
            "break_lease",
            default="",
            matches=Matches(
                RUN_ID_PATTERN,
                "is not a run id such as 20261124T011106-3fa2c1; give the run id the refusal named",
            ),
            help="The run id of a run that holds the output's lease (`_lease.json`) but no "
            "longer runs, such as a cancelled job, as a refused launch names it; this run "
            "breaks that run's lease, and no other.",
            see=See("One run per output", "publishing.md#one-run-per-output"),
            form=Form(
                "Break the lease of run",
                "Input and output",
                "20261124T011106-3fa2c1",
                ("^[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$",),
            ),
        ),
        Option(
            "lease_stale_after_hours",
            type=float,
            default=LEASE_STALE_AFTER_HOURS,
            limits=POSITIVE,
            help="Hours after its start when this run's lease on the output counts as stale, "
            "so that a later run breaks it without `--break_lease`.",
            see=See("One run per output", "publishing.md#one-run-per-output"),
            form=Form(
                "Lease stale after (hours)",
                "Input and output",
                "48",
                (r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$",),
            ),
        ),
    ),
)

FETCHING = Group(
    "Fetching",
    "How `http://` and `https://` URIs are fetched: never from a private address, a few "
    "requests at a time per host, opt-outs honoured (see docs/input.md).",
    (
        Option(
            "allow_private_addresses",
            default="",
            matches=Matches(
                r"^[0-9A-Fa-f:.]+/[0-9]{1,3}(,[0-9A-Fa-f:.]+/[0-9]{1,3})*$",
                "is not a comma-separated list of networks such as 10.20.0.0/16",
            ),
            help="Networks (CIDR, comma-separated) whose private addresses may be fetched, "
            "such as an internal CDN's `10.20.0.0/16`; every other loopback, private, "
            "link-local (the metadata server's among them), shared or reserved address "
            "stays refused, also after a redirect.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("Private networks to fetch from", "Fetching", "10.20.0.0/16"),
        ),
        Option(
            "max_connections_per_host",
            type=int,
            default=DEFAULT_CONNECTIONS_PER_HOST,
            limits=Limits(1),
            help="Requests in flight to one host at once, per worker process.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("Connections per host", "Fetching", "2", (_POSITIVE,)),
        ),
        Option(
            "requests_per_second_per_host",
            type=float,
            default=DEFAULT_REQUESTS_PER_SECOND,
            limits=POSITIVE,
            help="Requests started per second to one host, per worker process.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("Requests per second per host", "Fetching", "5", (_POSITIVE_DECIMAL,)),
        ),
        Option(
            "fetch_deadline_seconds",
            type=float,
            default=DEFAULT_FETCH_DEADLINE,
            limits=POSITIVE,
            help="The most time one image's fetch may take, its retries and redirects included.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("Fetch deadline (s)", "Fetching", "60", (_POSITIVE_DECIMAL,)),
        ),
        Option(
            "ignore_opt_outs",
            default=False,
            help="Fetch images whose site opts out (robots.txt, or an `X-Robots-Tag` of "
            "`noai`, `noimageai`, `noindex` or `noimageindex`): only for collections you "
            "own. The summary records that it was set.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("Ignore opt-outs", "Fetching", "false"),
        ),
        Option(
            "fetch_user_agent",
            default="",
            help="The `User-Agent` of every image and robots.txt request; by default the "
            "tool's name and version (`image-embeddings/VERSION`). robots.txt rules and "
            "`X-Robots-Tag` headers name it by the part before the `/`.",
            see=See("Fetching", "input.md#fetching"),
            form=Form("User agent", "Fetching", "my-crawler/1.0 (+https://example.com/bot)"),
        ),
    ),
)

CONSOLE = Group(
    "Console",
    "What a run prints while it runs and when it ends.",
    (
        Option(
            "verbose",
            default=False,
            help="Show the libraries' own logs (TensorFlow's, absl's, gRPC's and Beam's "
            "start-up lines), which a run hides otherwise.",
            see=See("What a run prints", "runners.md#what-a-run-prints"),
            form=Form("Libraries' logs", "Logs", "false"),
        ),
        Option(
            "json",
            default=False,
            help="At the end of a local run, print the whole summary as JSON (as "
            "`summary.json` holds it) instead of the short result.",
            see=See("What a run prints", "runners.md#what-a-run-prints"),
            form=Form("Summary as JSON", "Logs", "false"),
        ),
    ),
)

GROUPS = (
    INPUT,
    FETCHING,
    MODEL,
    ENGINE,
    LABELS,
    OUTPUTS,
    REPORT,
    SIMILARITY,
    DESTINATIONS,
    RUN,
    CONSOLE,
)
OPTIONS = tuple(option for group in GROUPS for option in group.options)


@dataclass(frozen=True)
class BeamField:
    """An Apache Beam flag the Console form offers too: Beam's --help has its own text;
    this is the form's (no `--flag` in backticks: it names Beam's flag as it is)."""

    help: str
    form: Form


BEAM_FORM_FIELDS = {
    "max_num_workers": BeamField(
        "Upper limit of workers Dataflow may autoscale to (Beam's --max_num_workers). Set it "
        "here or as the launch's maxWorkers (gcloud --max-workers), never both: Dataflow "
        "refuses a launch that sets both.",
        Form("Maximum workers", "Performance", "50", (_POSITIVE,), type="NUMBER"),
    ),
}
