"""How an output's embeddings were made, read back from its summary.json: the model, its
weights and the load step's settings that a query must be embedded with."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.common import read_json
from pipeline.inputs import Decoding, Resize
from pipeline.models import BACKBONES, ModelSpec
from pipeline.outputs import (
    FORMATS,
    SUMMARY,
    JournalError,
    Provenance,
    UnfinishedPublishError,
    named_runs,
    output_path,
    roll_forward,
)


class SearchError(ValueError):
    """A search that cannot run; its message is the one line the command prints."""


@dataclass(frozen=True)
class Recorded:
    """An output and how its embeddings were made."""

    output: str
    made: Provenance
    resize: Resize  # the rule made.resize describes
    keep_columns: tuple[str, ...] = ()
    engine: str = "tensorflow"  # what embedded the images, so that a query image is alike
    precision: str = "float32"
    input: str = ""  # the run's --input, where int8's calibration sample came from
    uri_column: str = ""  # and its --uri_column
    runs: tuple[str, ...] | None = None  # the runs whose shards count; None: every run's

    @property
    def spec(self) -> ModelSpec:
        return self.made.model_spec()

    @property
    def calibration(self) -> str:
        """int8's calibration sample digest (models.sample_digest)."""
        return self.made.calibration

    @property
    def decoding(self) -> Decoding:
        """How the run read and decoded its images, so that a query image is alike (a
        query's path is the user's own, so a local one may be read)."""
        made = self.made
        return Decoding(self.resize, made.jpeg_draft, made.max_image_pixels, made.max_image_bytes)

    @property
    def shards(self) -> list[str]:
        """Globs of the output's Parquet shards, in either layout (of these, the runs'
        the summary names count)."""
        return FORMATS["parquet"].record_files(self.output)


def read_recorded(output: str) -> Recorded:
    """The output's record; SearchError, saying why, for an output that has none, or one
    this version cannot embed a query for. A publish that stopped midway is finished
    first, so that the summary and the shards agree."""
    try:
        roll_forward(output)
    except (JournalError, UnfinishedPublishError) as error:
        raise SearchError(str(error)) from error
    path = output_path(output, SUMMARY)
    try:
        summary = read_json(path)
    except Exception as error:
        raise SearchError(f"{path} cannot be read ({type(error).__name__}: {error})") from error
    if summary is None:
        raise SearchError(
            f"{output} holds no {SUMMARY}: not an output of a finished run (give the --output "
            "of a run that passed)"
        )
    try:
        return _recorded(output, summary)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, SearchError):
            raise
        raise SearchError(
            f"{path} does not say how the embeddings were made ({error!r})"
        ) from error


def _recorded(output: str, summary: dict) -> Recorded:
    if summary.get("output_format") != "parquet":
        raise SearchError(
            f"{output} holds --output_format {summary.get('output_format')} embeddings; "
            "search reads Parquet outputs (run with --output_format parquet)"
        )
    model = summary["model"]
    if model not in BACKBONES:
        raise SearchError(f"{output} was made by {model!r}, a model this version does not know")
    made = Provenance.read(summary)
    return Recorded(
        output=output,
        made=made,
        resize=_resize(made.model_spec(), made.resize),
        keep_columns=tuple(summary.get("keep_columns", ())),
        **_engine(summary, made),
        input=str(summary.get("input", "")),
        uri_column=str(summary.get("uri_column", "")),
        runs=named_runs(summary, output, "parquet"),
    )


def _engine(summary: dict, made: Provenance) -> dict[str, str]:
    """The engine and precision the run's workers used, where one ran (engines_ran), else
    the options it asked for (resolved here as a worker would)."""
    ran = summary.get("engines_ran") or []
    if len(ran) == 1:
        return {"engine": str(ran[0]["engine"]), "precision": str(ran[0]["precision"])}
    return {"engine": made.engine, "precision": made.precision}


def _resize(spec: ModelSpec, recorded: str) -> Resize:
    """The rule the run resized by: the model's own, or the --resize policy it names."""
    policy = recorded if recorded in ("squash", "center_crop") else "squash"
    resize = spec.resize(policy)
    if resize.describe() != recorded:
        raise SearchError(
            f"the output's images were resized by {recorded!r}, which {spec.model} does not do "
            f"in this version ({resize.describe()!r})"
        )
    return resize
