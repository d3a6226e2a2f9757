"""Every flag of the pipeline, declared once, a group per feature.

Each declaration is what `--help` prints, its row in docs/options.md and its field on
the Flex Template's Console form (metadata.json); pipeline/options/describe.py writes the last
two from here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
from pipeline.outputs import FORMATS

OUTPUT_FORMATS = tuple(FORMATS)
POOLINGS = ("avg", "max", "none")
RESIZE_POLICIES = ("squash", "center_crop")

MAX_NEIGHBORS = 100
DEFAULT_CELL_SIZE = 200
DEFAULT_CELLS_PER_IMAGE = 3
MAX_CELLS_PER_IMAGE = 16
# Dataflow batch jobs of millions of images can run for a day; a lease twice that old is
# a crashed run's.
LEASE_STALE_AFTER_HOURS = 48

# Form regexes shared by several parameters.
_NATURAL = "^[0-9]+$"
_FRACTION = r"^(0(\.[0-9]+)?|1(\.0+)?)$"
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


@dataclass(frozen=True)
class Form:
    """A parameter's field on the Flex Template's Console form (a metadata.json entry).

    Its name, whether it is optional, its default and its enum values follow from the
    flag, and so does its type unless `type` names one (and a boolean's regex); the rest
    is said here.
    """

    label: str
    help: str  # ends with "For example, VALUE": the tests launch with that value
    group: str  # the form's section (groupName)
    regexes: tuple[str, ...] = ()
    type: str = ""  # paramType where the flag's own type does not tell it
    enum: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # value: label, description


@dataclass(frozen=True)
class Option:
    """One flag: how it is read, its --help text, its docs row and its form field.

    A bool default makes a boolean flag (true/false/1/0/yes/no; alone, it means true);
    default None makes a required one. choices are checked by options.validate, so
    that a wrong value is a UsageError like every other.
    """

    name: str
    help: str  # for --help
    summary: str  # for docs/options.md (Markdown)
    form: Form
    default: str | int | float | bool | None = None
    type: Callable[[str], object] | None = None
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def boolean(self) -> bool:
        return isinstance(self.default, bool)

    def argparse_kwargs(self) -> dict:
        """What ArgumentParser.add_argument takes for this flag, besides its name."""
        if self.boolean:
            return {
                "type": parse_bool,
                "nargs": "?",
                "const": True,
                "default": self.default,
                "help": self.help,
            }
        kwargs: dict = {"help": self.help}
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
            help="CSV or text file of image URIs (local path or gs://), or a glob of images "
            "such as gs://bucket/photos/**.jpg. Required.",
            summary="CSV or text file of image URIs, or a glob of images "
            "(see [Input](input.md#input))",
            form=Form(
                "Image list or pattern",
                "A CSV or text file of image URIs in Cloud Storage (a header column named uri, "
                "or the first column), or a glob of images. For example, "
                "gs://my-bucket/lists/photos.csv or gs://my-bucket/photos/**.jpg",
                "Input and output",
                ("^gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+$",),
            ),
        ),
        Option(
            "resize",
            default="squash",
            choices=RESIZE_POLICIES,
            help="squash: stretch the whole image to the model's input size; center_crop: "
            "keep the aspect ratio and crop the largest centred square. (default: %(default)s)",
            summary="`squash` or `center_crop` (see [Decoding](input.md#decoding))",
            form=Form(
                "Resize policy",
                "squash stretches the whole image to the model's input size; center_crop keeps "
                "the aspect ratio and crops the largest centred square. For example, squash",
                "Images",
                enum={
                    "squash": ("Squash", "Stretch the whole image"),
                    "center_crop": ("Centre crop", "Keep the aspect ratio, crop the centre"),
                },
            ),
        ),
        Option(
            "jpeg_draft",
            default=True,
            help="Let the JPEG decoder scale large images down by 2, 4 or 8 while decoding "
            "(much faster; see docs/input.md for the tolerance). (default: %(default)s)",
            summary="let the JPEG decoder downscale while decoding "
            "(see [Decoding](input.md#decoding))",
            form=Form(
                "Fast JPEG decoding",
                "Let the JPEG decoder downscale large images while decoding (about 4x faster; "
                "mean difference under 0.5 grey levels). For example, true",
                "Images",
            ),
        ),
        Option(
            "max_image_pixels",
            type=int,
            default=DEFAULT_MAX_IMAGE_PIXELS,
            help="Images with more pixels go to the dead letter as decompression bombs. "
            "(default: %(default)s)",
            summary="larger images are refused as decompression bombs",
            form=Form(
                "Pixel limit",
                "Images with more pixels are refused as decompression bombs and listed in the "
                "dead letter. For example, 100000000",
                "Images",
                (_NATURAL,),
            ),
        ),
        Option(
            "max_image_bytes",
            type=int,
            default=DEFAULT_MAX_IMAGE_BYTES,
            help="Image files larger than this many bytes go to the dead letter unread "
            "(ImageTooLargeError). (default: %(default)s)",
            summary="larger files (64 MiB) are refused unread (see [Decoding](input.md#decoding))",
            form=Form(
                "File size limit",
                "Image files larger than this many bytes are not read and are listed in the "
                "dead letter. For example, 67108864",
                "Images",
                (_NATURAL,),
            ),
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
            help=f"The model: {', '.join(BACKBONES)} (keras.applications ImageNet "
            "classifiers; keras-hub CLIP, SigLIP 2 and DINOv2 presets, by their preset "
            "names). (default: %(default)s)",
            summary=", ".join(f"`{name}`" for name in BACKBONES) + " (see [Models](models.md))",
            form=Form(
                "Model",
                "The model: a keras.applications backbone, or a keras-hub CLIP, SigLIP 2 or "
                "DINOv2 preset. For example, resnet50 or clip_vit_base_patch16",
                "Model",
                enum={
                    name: (backbone.class_name, f"{backbone.embedding_size} features")
                    for name, backbone in BACKBONES.items()
                },
            ),
        ),
        Option(
            "weights",
            default="pretrained",
            help="pretrained (the model's published weights, downloaded and cached; "
            "imagenet is the same for the keras.applications models), random (seeded, "
            "untrained: smoke tests only), a Keras weights file (keras.applications) or a "
            "keras-hub preset folder (CLIP, SigLIP 2, DINOv2), local or gs://. "
            "(default: %(default)s)",
            summary="`pretrained` (`imagenet`), `random`, a Keras weights file or a keras-hub "
            "preset folder (local or `gs://`)",
            form=Form(
                "Weights",
                "pretrained (built into the container image for resnet50 and the models of "
                "its PRESETS build argument), random (untrained, smoke tests only), a Keras "
                "weights file in Cloud Storage saved from the same keras.applications model "
                "without its top, or a keras-hub preset folder in Cloud Storage. For "
                "example, gs://my-bucket/models/resnet50_notop.weights.h5",
                "Model",
                (r"^(pretrained|imagenet|random|gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]/.+)$",),
            ),
        ),
        Option(
            "seed",
            type=int,
            default=0,
            help="Seed for --weights random, the --map report's sample and the similarity "
            "search's cells. (default: %(default)s)",
            summary="seed for `--weights random`, the report's sample and the similarity "
            "search's cells",
            form=Form(
                "Random weights seed",
                "Seed for weights=random, the map report's sample and the similarity search's "
                "cells. For example, 0",
                "Model",
                (_NATURAL,),
            ),
        ),
        Option(
            "pooling",
            default="avg",
            choices=POOLINGS,
            help=f"One of {', '.join(POOLINGS)}: global average or max pooling of the last "
            "feature map, or none for the whole map. (default: %(default)s)",
            summary="`avg` or `max` (one vector per image), `none` (the whole last feature map)",
            form=Form(
                "Pooling",
                "How the last feature map becomes the embedding: avg or max give one vector per "
                "image; none keeps the whole map (7x7x2048 for ResNet50). For example, avg",
                "Model",
                enum={
                    "avg": ("Average", "Global average pooling"),
                    "max": ("Maximum", "Global max pooling"),
                    "none": ("None", "The whole feature map"),
                },
            ),
        ),
    ),
)

_TEXT_MODELS = ", ".join(name for name, line in BACKBONES.items() if line.text_tower)

ENGINE = Group(
    "Engine",
    "What runs the model on each worker, and in which precision (see docs/engine.md).",
    (
        Option(
            "engine",
            default="auto",
            choices=ENGINES,
            help="auto: TensorFlow where the worker sees a GPU, otherwise OpenVINO on the CPU "
            "(falling back to TensorFlow, logged and counted, where OpenVINO cannot convert "
            "the model); tensorflow; openvino (the same Keras model converted by OpenVINO, "
            "an error if it cannot run). (default: %(default)s)",
            summary="`auto`, `tensorflow` or `openvino` (see [Engine](engine.md))",
            form=Form(
                "Engine",
                "auto runs TensorFlow on a worker with a GPU and OpenVINO on the CPU "
                "otherwise; openvino converts the same Keras model with OpenVINO and fails "
                "the job if it cannot. For example, auto",
                "Performance",
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
            help="auto: bfloat16 on OpenVINO where the CPU computes it natively (AVX512_BF16 "
            "or AMX), mixed float16 on TensorFlow with a GPU of compute capability 7.0 or more, "
            "float32 elsewhere; float32; bfloat16 (OpenVINO only; about 3x faster "
            "on such CPUs, cosine to float32 above 0.999); int8 (OpenVINO only, never chosen "
            f"by auto: the model quantised by NNCF on the input's first {CALIBRATION_IMAGES} "
            "images, 1.5-1.8x bfloat16's speed, recall@10 against float32 about 0.95). "
            "--skip_existing refuses to mix runs asked for different precisions, or int8 runs "
            "calibrated on other images. (default: %(default)s)",
            summary="`auto`, `float32`, `bfloat16` or `int8` (OpenVINO; see [Engine](engine.md))",
            form=Form(
                "Precision",
                "auto computes in bfloat16 with OpenVINO where the worker's CPU supports it "
                "natively (AVX512_BF16 or AMX), in mixed float16 on a GPU with tensor cores and in "
                "float32 elsewhere; bfloat16 and int8 need the openvino or auto engine; int8 "
                f"quantises the model on the input's first {CALIBRATION_IMAGES} images in each "
                "worker process. For example, auto",
                "Performance",
                enum={
                    "auto": ("Automatic", "bfloat16 or float16 where the hardware computes it"),
                    "float32": ("float32", "Full precision on every engine"),
                    "bfloat16": ("bfloat16", "OpenVINO on a CPU with AVX512_BF16 or AMX"),
                    "int8": ("int8", "OpenVINO, quantised on the input's first images"),
                },
            ),
        ),
    ),
)

LABELS = Group(
    "Zero-shot labels",
    "Each image's most similar labels by the text tower of a CLIP or SigLIP 2 model.",
    (
        Option(
            "zero_shot_labels",
            default="",
            help="Zero-shot labels: a comma-separated list, or a text file of one label per "
            f"line (local or gs://; a path ending in .txt, or an existing file), at most "
            f"{MAX_LABELS:,}. Each image gets its best label and score and its best "
            f"{TOP_LABELS} in every output. Needs a model with a text tower ({_TEXT_MODELS}) "
            "and its vocabulary (not --weights random). (default: none)",
            summary="zero-shot labels, a comma-separated list or a file of one per line "
            "(local or `gs://`), for CLIP and SigLIP 2 (see [Labels](labels.md))",
            form=Form(
                "Zero-shot labels",
                f"A text file in Cloud Storage of one label per line (at most {MAX_LABELS:,}), "
                "or a comma-separated list; each image gets its most similar label, its "
                f"score and its best {TOP_LABELS} in every output. Needs a CLIP or SigLIP 2 "
                "model. For example, gs://my-bucket/labels/products.txt",
                "Labels",
                (r"^.*[^,\s].*$",),
            ),
        ),
        Option(
            "label_template",
            default=DEFAULT_TEMPLATE,
            help="The text each label is embedded as, {} standing for the label. "
            "(default: %(default)s)",
            summary="the text each label is embedded as, `{}` for the label",
            form=Form(
                "Label template",
                "The text each label is embedded as, {} standing for the label (the default, "
                f"{DEFAULT_TEMPLATE}, is CLIP's own prompt). For example, {{}}",
                "Labels",
                (r"^.*\{\}.*$",),
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
            help="Directory or gs:// prefix for embeddings, dead letter and summary. Required.",
            summary="local directory or `gs://` prefix for every output",
            form=Form(
                "Output prefix",
                "Cloud Storage folder for embeddings, the dead letter and summary.json. For "
                "example, gs://my-bucket/embeddings/2026-11-24",
                "Input and output",
                (_GCS_FOLDER,),
                type="GCS_WRITE_FOLDER",
            ),
        ),
        Option(
            "output_format",
            default="parquet",
            choices=OUTPUT_FORMATS,
            help=f"One of {', '.join(OUTPUT_FORMATS)}. (default: %(default)s)",
            summary="`parquet` or `npy`",
            form=Form(
                "Output format",
                "parquet: sharded Parquet files with uri, embedding, width and height columns; "
                "npy: one .npy file per image plus an index CSV. For example, parquet",
                "Input and output",
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
            help="Number of Parquet / index files; 0 lets the runner decide. "
            "(default: %(default)s)",
            summary="number of Parquet / index files; `0` lets the runner decide",
            form=Form(
                "Output shards",
                "Number of Parquet or index files; 0 lets Dataflow decide. For example, 0",
                "Input and output",
                (_NATURAL,),
            ),
        ),
        Option(
            "skip_existing",
            default=False,
            help="Skip images whose embeddings are already under --output (from the Parquet "
            "uri column or the .npy index) and add to them instead of replacing them. "
            "(default: %(default)s)",
            summary="skip images already embedded under `--output`, add the rest (see "
            "[Incremental runs](outputs.md#incremental-runs))",
            form=Form(
                "Skip images already embedded",
                "Skip images whose embeddings are already under the output prefix and add the "
                "new ones beside them, for scheduled runs over a growing list. For example, true",
                "Input and output",
            ),
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
            help="Also project the embeddings to 2-D by PCA and write map-coordinates-*.csv, "
            "map.png and report.html (a self-contained page of image thumbnails). "
            "(default: %(default)s)",
            summary="also write 2-D coordinates, `map.png` and `report.html` "
            "(see [Map and report](report.md))",
            form=Form(
                "Map and report",
                "Also project the embeddings to 2-D by PCA and write map-coordinates-*.csv, "
                "map.png and report.html (thumbnails you can zoom, pan and hover, plus the run "
                "summary) under the output prefix. For example, true",
                "Map",
            ),
        ),
        Option(
            "map_sample_size",
            type=int,
            default=5000,
            help="Most points map.png and report.html draw; larger runs show a seeded sample, "
            "while the coordinates file holds every image. (default: %(default)s)",
            summary="most points `map.png` and `report.html` draw; the coordinates hold every "
            "image",
            form=Form(
                "Points drawn in the map and report",
                "Most points map.png and report.html draw; larger runs show a seeded sample "
                "while the coordinates file holds every image. For example, 5000",
                "Map",
                ("^[1-9][0-9]*$",),
            ),
        ),
    ),
)

SIMILARITY = Group(
    "Similarity",
    "Every image's nearest neighbours and groups of near-duplicates.",
    (
        Option(
            "neighbors",
            type=int,
            default=0,
            help=f"Find every image's K most similar other images (cosine similarity of the "
            f"mean-centred embeddings, all images under --output) and write "
            f"neighbors-*.parquet; 0 for none, at most {MAX_NEIGHBORS}. (default: %(default)s)",
            summary=f"write every image's K most similar images, at most {MAX_NEIGHBORS} "
            "(see [Similarity](similarity.md))",
            form=Form(
                "Nearest neighbours per image",
                "Find every image's K most similar other images (cosine similarity of the "
                "mean-centred embeddings, over every image under the output) and write "
                f"neighbors-*.parquet; 0 for none, at most {MAX_NEIGHBORS}. For example, 10",
                "Similarity",
                ("^([0-9]|[1-9][0-9]|100)$",),
            ),
        ),
        Option(
            "duplicate_threshold",
            type=float,
            default=0,
            help="Group images joined by similarities >= this value (for example 0.95) into "
            "near-duplicate groups in duplicates-*.csv; 0 for none. (default: %(default)s)",
            summary="write near-duplicate groups of images joined by similarities >= this "
            "(see [Similarity](similarity.md))",
            form=Form(
                "Near-duplicate threshold",
                "Group images joined by similarities at or above this value into near-duplicate "
                "groups in duplicates-*.csv; 0 for none. For example, 0.95",
                "Similarity",
                (_FRACTION,),
            ),
        ),
        Option(
            "similarity_cell_size",
            type=int,
            default=DEFAULT_CELL_SIZE,
            help="Images per cell of the partitioned search for --neighbors and "
            "--duplicate_threshold; up to this many images the search is exact. Larger: "
            "better recall, slower. (default: %(default)s)",
            summary="images per cell of the partitioned search; exact search up to this many "
            "images",
            form=Form(
                "Images per search cell",
                "Images per cell of the partitioned search; up to this many images the search "
                "is exact. Larger: better recall, slower. For example, 200",
                "Similarity",
                ("^([2-9]|[1-9][0-9]+)$",),
            ),
        ),
        Option(
            "similarity_cells_per_image",
            type=int,
            default=DEFAULT_CELLS_PER_IMAGE,
            help="How many of its most similar cells each image joins. More: better "
            "recall, slower (time grows as its square). (default: %(default)s)",
            summary="cells each image joins; more: better recall, slower",
            form=Form(
                "Cells each image joins",
                "How many of its most similar cells each image joins. More: better recall, "
                "slower (time grows as its square). For example, 3",
                "Similarity",
                ("^([1-9]|1[0-6])$",),
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
            help="Comma-separated columns of the input CSV's header to keep with each image, "
            "as string columns of the Parquet output and the .npy index, BigQuery columns "
            "and Vector Search restricts. (default: none)",
            summary="comma-separated CSV columns to carry into every output "
            "(see [Destinations](destinations.md))",
            form=Form(
                "Input columns to keep",
                "Comma-separated columns of the input CSV's header to keep with each image: "
                "string columns in the Parquet output, the .npy index and BigQuery, and "
                "restricts in the Vector Search files. The input must be a CSV with a header. "
                "For example, label,sku",
                "Destinations",
                ("^[^,]+(,[^,]+)*$",),
            ),
        ),
        Option(
            "vector_search_output",
            default="",
            help="A folder (gs:// or local) to write this run's embeddings to as Vertex AI "
            "Vector Search input: vectors-*.json, with the kept columns as restricts. "
            "(default: none)",
            summary="a folder (`gs://` or local) for Vertex AI Vector Search input files",
            form=Form(
                "Vector Search input folder",
                "A Cloud Storage folder of its own to write this run's embeddings to as Vertex "
                "AI Vector Search input (vectors-*.json; the kept columns as restricts), ready "
                "for gcloud ai indexes create or update. For example, "
                "gs://my-bucket/vector-search/products",
                "Destinations",
                (_GCS_FOLDER,),
                type="GCS_WRITE_FOLDER",
            ),
        ),
        Option(
            "vector_search_crowding_column",
            default="",
            help="A kept column whose value becomes each datapoint's crowding_tag in "
            "--vector_search_output. (default: none)",
            summary="a kept column whose value is each datapoint's `crowding_tag`",
            form=Form(
                "Vector Search crowding column",
                "One of the kept columns whose value becomes each datapoint's crowding_tag. "
                "For example, sku",
                "Destinations",
                ("^[^,]+$",),
            ),
        ),
        Option(
            "bigquery_table",
            default="",
            help="PROJECT.DATASET.TABLE to load the Parquet embeddings into with a load job "
            "once they are written (created if missing; a re-run replaces its rows, "
            "--skip_existing appends). Needs a gs:// --output. (default: none)",
            summary="`PROJECT.DATASET.TABLE` to load the embeddings into (a load job; needs a "
            "`gs://` output)",
            form=Form(
                "BigQuery table",
                "PROJECT.DATASET.TABLE to load the Parquet embeddings into with one load job "
                "once they are written; created if missing, replaced on a re-run, appended to "
                "with skip_existing. The dataset must exist. For example, "
                "my-project.images.embeddings",
                "Destinations",
                (r"^([a-z0-9.-]+:)?[a-z][a-z0-9-]*[a-z0-9]\.[A-Za-z0-9_]+\.[^.`]+$",),
            ),
        ),
        Option(
            "bigquery_vector_index",
            default=False,
            help="Also create an IVF vector index (cosine distance) on the table's embedding "
            "column once the table is large enough for one. (default: %(default)s)",
            summary="also create an IVF, cosine vector index on the table once it holds 10 MB",
            form=Form(
                "BigQuery vector index",
                "Also create an IVF vector index (cosine distance) on the table's embedding "
                "column once the table holds the 10 MB BigQuery needs for one. For example, true",
                "Destinations",
            ),
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
            help="Smallest batch sent to the model. (default: %(default)s)",
            summary="smallest batch given to the model",
            form=Form(
                "Minimum batch size",
                "Smallest batch given to the model. For example, 8",
                "Performance",
                (_NATURAL,),
            ),
        ),
        Option(
            "max_batch_size",
            type=int,
            default=32,
            help="Largest batch sent to the model. (default: %(default)s)",
            summary="largest batch given to the model",
            form=Form(
                "Maximum batch size",
                "Largest batch given to the model. For example, 32",
                "Performance",
                (_NATURAL,),
            ),
        ),
        Option(
            "max_failure_fraction",
            type=float,
            default=0.05,
            help="The run fails when more than this fraction of unique URIs could not be "
            "embedded. (default: %(default)s)",
            summary="the run fails when more of its inputs than this fail",
            form=Form(
                "Failure budget",
                "The job fails when more than this fraction of its inputs cannot be embedded. "
                "For example, 0.05",
                "Input and output",
                (_FRACTION,),
            ),
        ),
        Option(
            "break_lease",
            default="",
            help="The run id of a run that holds --output's lease (_lease.json) but is no "
            "longer running, such as a cancelled job; this run breaks that run's lease, and "
            "no other. (default: none)",
            summary="break the lease of this run id, a run that no longer runs (see "
            "[One run per output](publishing.md#one-run-per-output))",
            form=Form(
                "Break the lease of run",
                "The run id of a run that holds the output's lease (_lease.json) but no longer "
                "runs, such as a cancelled job, as a refused launch names it; this run breaks "
                "that run's lease, and no other. For example, 20261124T011106-3fa2c1",
                "Input and output",
                ("^[0-9]{8}T[0-9]{6}-[0-9a-f]{6}$",),
            ),
        ),
        Option(
            "lease_stale_after_hours",
            type=float,
            default=LEASE_STALE_AFTER_HOURS,
            help="Hours after its start when this run's lease counts as stale: a later run "
            "then breaks it without --break_lease. (default: %(default)s)",
            summary="hours after its start when this run's lease counts as stale (see "
            "[One run per output](publishing.md#one-run-per-output))",
            form=Form(
                "Lease stale after (hours)",
                "Hours after its start when this run's lease on the output counts as stale, so "
                "that a later run breaks it without break_lease. For example, 48",
                "Input and output",
                (r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)$",),
            ),
        ),
    ),
)

GROUPS = (INPUT, MODEL, ENGINE, LABELS, OUTPUTS, REPORT, SIMILARITY, DESTINATIONS, RUN)
OPTIONS = tuple(option for group in GROUPS for option in group.options)

# Apache Beam's own flags that the Console form offers too, by flag name.
BEAM_FORM_FIELDS = {
    "max_num_workers": Form(
        "Maximum workers",
        "Upper limit of workers Dataflow may autoscale to (Beam's --max_num_workers). Set it "
        "here or as the launch's maxWorkers (gcloud --max-workers), never both: Dataflow "
        "refuses a launch that sets both. For example, 50",
        "Performance",
        ("^[1-9][0-9]*$",),
        type="NUMBER",
    ),
}
