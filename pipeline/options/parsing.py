"""The pipeline's flags (declared in pipeline/options/flags.py) read and checked, beside Beam's."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.destinations import BIGQUERY_COLUMN, MAX_VECTOR_FILES, RESERVED_PREFIXES, parse_table
from pipeline.inputs import AddressPolicy
from pipeline.models import (
    BACKBONES,
    DEFAULT_TEMPLATE,
    KERAS_HUB,
    HeadError,
    HeadSpec,
    LabelsError,
    check_template,
    parse_heads,
)
from pipeline.options.flags import (
    DEFAULT_CELL_SIZE,
    DEFAULT_CELLS_PER_IMAGE,
    GROUPS,
    LEASE_STALE_AFTER_HOURS,
    MAX_CELLS_PER_IMAGE,
    MAX_NEIGHBORS,
    OPTIONS,
    OUTPUT_FORMATS,
    POOLINGS,
    RESIZE_POLICIES,
    Option,
    parse_bool,
)
from pipeline.options.suggest import OneLineParser, did_you_mean
from pipeline.outputs import FORMATS, KEEP_COLUMNS, LABEL_COLUMNS

USAGE = "python -m pipeline --input URIS_CSV_OR_GLOB --output PREFIX [options]"
DESCRIPTION = "Embed images listed in a CSV (or matched by a glob) with a Keras model."
BEAM_TITLE = "Apache Beam pipeline options (passed to the runner unchanged)"
BEAM_HINT = """\
Apache Beam's pipeline options (--runner, --project, --region, --temp_location,
--max_num_workers, ...) are taken too, and passed to the runner unchanged.
List them with: python -m pipeline --help-beam
"""

# The constants declared with the flags are imported from here too.
__all__ = [
    "DEFAULT_CELLS_PER_IMAGE",
    "DEFAULT_CELL_SIZE",
    "LEASE_STALE_AFTER_HOURS",
    "MAX_CELLS_PER_IMAGE",
    "MAX_NEIGHBORS",
    "OUTPUT_FORMATS",
    "POOLINGS",
    "RESIZE_POLICIES",
    "EmbeddingOptions",
    "UsageError",
    "build_parser",
    "compare_threshold",
    "kept_columns",
    "parse_bool",
    "parse_options",
    "print_beam_help",
    "print_help",
    "validate",
]


class UsageError(ValueError):
    """A flag or flag value the user has to correct."""


class EmbeddingOptions(PipelineOptions):
    """The pipeline's own flags; their names are also the Flex Template parameters."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        for group in GROUPS:
            arguments = parser.add_argument_group(group.title, group.description)
            for option in group.options:
                arguments.add_argument(option.flag, **option.argparse_kwargs())


def _beam_options_classes() -> list[type[PipelineOptions]]:
    # The same discovery Beam's own PipelineOptions.get_all_options uses.
    unique: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():
        unique.setdefault(str(cls), cls)
    return [cls for cls in unique.values() if cls is not EmbeddingOptions]


class _Parser(OneLineParser):
    """Refuses bad usage with a UsageError, one line as every other refusal of the command;
    its help shows the pipeline's own flags, and says where Beam's are."""

    refusal = UsageError

    def format_help(self) -> str:
        return f"{super().format_help()}\n{BEAM_HINT}"


def _add_beam_flags(parser: argparse.ArgumentParser, shown: bool) -> None:
    beam_group = parser.add_argument_group(BEAM_TITLE)
    for cls in _beam_options_classes():
        cls._add_argparse_args(beam_group)
    if not shown:
        # Some 680 lines of help that would bury the pipeline's own: --help-beam shows them.
        for action in beam_group._group_actions:
            action.help = argparse.SUPPRESS


def build_parser() -> argparse.ArgumentParser:
    """A parser that knows this pipeline's flags and every Beam pipeline flag; its help
    shows the pipeline's own flags, by group."""
    parser = _Parser(
        prog="python -m pipeline", usage=USAGE, description=DESCRIPTION, allow_abbrev=False
    )
    EmbeddingOptions._add_argparse_args(parser)
    _add_beam_flags(parser, shown=False)
    return parser


def print_help(file: TextIO | None = None) -> None:
    """python -m pipeline --help: the pipeline's own flags by group, then where Beam's are
    listed (to file, or standard output)."""
    build_parser().print_help(file)


def print_beam_help(file: TextIO | None = None) -> None:
    """python -m pipeline --help-beam: the Apache Beam pipeline options the pipeline takes
    (to file, or standard output)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", usage=USAGE, add_help=False, allow_abbrev=False
    )
    _add_beam_flags(parser, shown=True)
    parser.print_help(file)


def kept_columns(opts: EmbeddingOptions) -> tuple[str, ...]:
    """--keep_columns as a tuple of names, in the order given."""
    return tuple(name.strip() for name in opts.keep_columns.split(",")) if opts.keep_columns else ()


def score_heads(opts: EmbeddingOptions) -> tuple[HeadSpec, ...]:
    """--score_head, each NAME=PATH (given once per head, or comma-separated)."""
    try:
        return parse_heads(opts.score_head)
    except HeadError as error:
        raise UsageError(str(error)) from None


def parse_options(argv: Sequence[str]) -> PipelineOptions:
    """Parses argv into Beam options, rejecting unknown flags and invalid values."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            # POSIX hands bytes that are not UTF-8 over as lone surrogates, which Beam,
            # the summary and every output would fail to write later.
            message = f"'{_escaped(argument)}' is not UTF-8: give every argument in UTF-8"
            raise UsageError(message) from None
    # Ours first: its refusals are one line, with the flag or value meant; Beam's print
    # usage and exit.
    build_parser().parse_args(list(argv))
    options = PipelineOptions(list(argv))
    validate(options.view_as(EmbeddingOptions))
    return options


def allowed_networks(opts: EmbeddingOptions) -> tuple[str, ...]:
    """--allow_private_addresses as a tuple of networks, in the order given."""
    networks = opts.allow_private_addresses
    return tuple(network.strip() for network in networks.split(",")) if networks else ()


def _check_networks(opts: EmbeddingOptions) -> None:
    """Each of --allow_private_addresses's networks is one the fetcher can read."""
    try:
        AddressPolicy.from_strings(allowed_networks(opts))
    except ValueError as error:
        raise UsageError(f"--allow_private_addresses: {error}") from None


def _escaped(value: str) -> str:
    """The value with each byte that is not UTF-8 shown as \\xNN."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no byte decodes to
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def validate(opts: EmbeddingOptions) -> None:
    """Checks values that argparse cannot, with messages that say what to do: each flag
    against its declaration (flags.py), then the flags that only mean something together."""
    # Every missing required flag first: nothing else means much without it.
    for option in sorted(OPTIONS, key=lambda option: not option.required):
        refusal = _refusal(option, getattr(opts, option.name))
        if refusal:
            raise UsageError(refusal)
    _check_model_options(opts)
    _check_networks(opts)
    _check_labels(opts)
    if opts.engine == "tensorflow" and opts.precision in ("bfloat16", "int8"):
        raise UsageError(
            f"--precision {opts.precision} runs on OpenVINO; TensorFlow computes in float32: "
            "use --engine openvino (or auto), or --precision float32 (see docs/engine.md)"
        )
    if not 1 <= opts.min_batch_size <= opts.max_batch_size:
        raise UsageError(
            f"batch sizes must satisfy 1 <= --min_batch_size <= --max_batch_size, got "
            f"{opts.min_batch_size} and {opts.max_batch_size}"
        )
    if opts.map and opts.pooling == "none":
        raise UsageError(
            "--map needs pooled embeddings: with --pooling none each embedding has a whole "
            "feature map (100352 values for resnet50), too many for PCA's covariance; "
            "use --pooling avg or max"
        )
    if (opts.neighbors or opts.duplicate_threshold) and opts.pooling == "none":
        raise UsageError(
            "--neighbors and --duplicate_threshold need pooled embeddings: use --pooling avg or max"
        )
    _check_compare(opts)
    _validate_destinations(opts)


def compare_threshold(opts: EmbeddingOptions) -> float:
    """The similarity a match in --compare_with reaches: --compare_threshold, else
    --duplicate_threshold."""
    return opts.compare_threshold or opts.duplicate_threshold


def _check_compare(opts: EmbeddingOptions) -> None:
    if not opts.compare_with:
        if opts.compare_threshold:
            raise UsageError("--compare_threshold needs --compare_with")
        return
    if not compare_threshold(opts):
        raise UsageError(
            "--compare_with needs a threshold: give --compare_threshold (or "
            "--duplicate_threshold, which it takes otherwise), such as 0.95"
        )
    if opts.pooling == "none":
        raise UsageError("--compare_with needs pooled embeddings: use --pooling avg or max")
    if opts.compare_with.rstrip("/") == opts.output.rstrip("/"):
        raise UsageError(
            f"--compare_with {opts.compare_with} is the --output itself: to find copies "
            "within one output, use --duplicate_threshold"
        )


def _refusal(option: Option, value: Any) -> str | None:
    """The declaration's refusal (flags.py), with the choice a misspelt value most likely meant."""
    refusal = option.refusal(value)
    if refusal and option.choices and value not in option.choices:
        refusal += did_you_mean(str(value), option.choices)
    return refusal


def _scheme(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "local"


def _validate_destinations(opts: EmbeddingOptions) -> None:
    keep = kept_columns(opts)
    own = (
        *FORMATS[opts.output_format].columns,
        *(LABEL_COLUMNS if opts.zero_shot_labels else ()),
        *KEEP_COLUMNS,
    )
    reserved = {name.lower(): name for name in own}
    for head in score_heads(opts):
        if head.name in reserved:
            raise UsageError(
                f"--score_head {head.name}: the name would clash with the output's own column "
                f"{reserved[head.name]!r}; name the head otherwise"
            )
        if head.name in {name.lower() for name in keep}:
            raise UsageError(
                f"--score_head {head.name}: the name would clash with the kept column "
                f"{head.name!r}; name the head otherwise"
            )
    reserved |= {head.name: head.name for head in score_heads(opts)}
    seen: set[str] = set()
    for name in keep:
        if not name:
            raise UsageError(f"--keep_columns {opts.keep_columns!r} has an empty name")
        if name.lower() in reserved:
            raise UsageError(
                f"--keep_columns: {name!r} would clash with the output's own column "
                f"{reserved[name.lower()]!r}; rename it in the CSV header"
            )
        if name.lower() in seen:
            raise UsageError(f"--keep_columns names {name!r} twice (names ignore case)")
        seen.add(name.lower())
    if opts.vector_search_crowding_column:
        if not opts.vector_search_output:
            raise UsageError("--vector_search_crowding_column needs --vector_search_output")
        if opts.vector_search_crowding_column not in keep:
            raise UsageError(
                f"--vector_search_crowding_column {opts.vector_search_crowding_column!r} must "
                "also be one of --keep_columns"
            )
    if opts.vector_search_output and opts.num_shards > MAX_VECTOR_FILES:
        raise UsageError(
            f"--num_shards {opts.num_shards}: Vector Search reads at most {MAX_VECTOR_FILES} "
            "files from one folder"
        )
    if opts.vector_search_output and _scheme(opts.vector_search_output) != _scheme(opts.output):
        raise UsageError(
            f"--vector_search_output {opts.vector_search_output} and --output {opts.output} "
            "must be on the same storage (both gs://, or both local): the run stages the "
            "Vector Search files under --output and moves them into the folder"
        )
    if opts.vector_search_output and _nested(opts.vector_search_output, opts.output):
        raise UsageError(
            "--vector_search_output must be a folder of its own, neither --output nor a "
            "folder inside or around it: Vector Search reads every file in it"
        )
    if opts.bigquery_vector_index and not opts.bigquery_table:
        raise UsageError("--bigquery_vector_index needs --bigquery_table")
    if opts.bigquery_table:
        if opts.output_format != "parquet":
            raise UsageError(
                "--bigquery_table loads the Parquet shards: use --output_format parquet"
            )
        if not opts.output.startswith("gs://"):
            raise UsageError(
                f"--bigquery_table loads from Cloud Storage, so --output must be a gs:// "
                f"prefix, not {opts.output}"
            )
        try:
            parse_table(opts.bigquery_table)
        except ValueError as error:
            raise UsageError(str(error)) from None
        bad = [
            name
            for name in keep
            if not BIGQUERY_COLUMN.fullmatch(name) or name.upper().startswith(RESERVED_PREFIXES)
        ]
        if bad:
            raise UsageError(
                f"--keep_columns: {', '.join(bad)} cannot be BigQuery column names "
                "(letters, digits and underscores, not starting with a digit or a reserved "
                "prefix such as _TABLE_, at most 300 characters); rename them in the CSV header"
            )


def _nested(first: str, second: str) -> bool:
    """Whether one folder is the other or holds it."""
    first, second = first.rstrip("/") + "/", second.rstrip("/") + "/"
    return first.startswith(second) or second.startswith(first)


def _check_labels(opts: EmbeddingOptions) -> None:
    """--zero_shot_labels needs a text tower and its vocabulary, and a template with {}; the list
    itself is read before any work (preflight.check_labels)."""
    if not opts.zero_shot_labels:
        if opts.label_template != DEFAULT_TEMPLATE:
            raise UsageError("--label_template needs --zero_shot_labels")
        return
    backbone = BACKBONES[opts.model]
    if not backbone.text_tower:
        with_text = ", ".join(name for name, line in BACKBONES.items() if line.text_tower)
        raise UsageError(
            f"--zero_shot_labels needs a model with a text tower ({with_text}); "
            f"{opts.model} has none"
        )
    if opts.weights == "random":
        raise UsageError(
            "--zero_shot_labels with --weights random: a model built from the table has no "
            "tokenizer vocabulary to read the labels with; give --weights pretrained or a "
            "preset folder with its tokenizer"
        )
    try:
        check_template(opts.label_template)
    except LabelsError as error:
        raise UsageError(str(error)) from None


def _check_model_options(opts: EmbeddingOptions) -> None:
    """A keras-hub model is preprocessed and pooled as it was trained: --resize and
    --pooling, and imagenet weights, are for the keras.applications models."""
    backbone = BACKBONES[opts.model]
    if backbone.library != KERAS_HUB:
        return
    own = f"{opts.model} {{}} as it was trained ({{}}); see docs/models.md"
    if opts.weights == "imagenet":
        raise UsageError(
            f"--weights imagenet is for the keras.applications models; {opts.model} takes "
            "pretrained, random or a keras-hub preset folder"
        )
    if opts.pooling != "avg":
        raise UsageError(
            "--pooling is for the keras.applications models; "
            + own.format("pools", backbone.pooling)
        )
    if opts.resize != "squash":
        raise UsageError(
            "--resize is for the keras.applications models; "
            + own.format("resizes", backbone.resize.describe())
        )
