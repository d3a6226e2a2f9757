"""What a run's options make of each step: the model, the store, and the optional outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions

from pipeline.destinations import (
    LoadIntoBigQuery,
    LoadIntoBigQueryFn,
    WriteVectorSearch,
    parse_table,
)
from pipeline.inputs import Decoding, LoadImages, first_uris
from pipeline.local_runner import is_local
from pipeline.models import (
    CALIBRATION_IMAGES,
    INT8,
    CalibrationSample,
    KerasEmbeddingHandler,
    LabelImages,
    LabelList,
    ModelSpec,
    embedding_shape,
    read_labels,
    sample_digest,
)
from pipeline.options import EmbeddingOptions, kept_columns
from pipeline.outputs import (
    EMBEDDINGS,
    FAILURES,
    FORMATS,
    STAGED_VECTORS,
    SUMMARY,
    CountLabels,
    OptionalOutput,
    ReadEmbeddedUris,
    current_runs,
    embedding_metadata,
    output_path,
    parquet_schema,
    run_folder,
    run_temp_folder,
    shard_prefix,
)
from pipeline.publish import PublishPlan
from pipeline.report import THUMBNAIL_SIZE, MapEmbeddings
from pipeline.similarity import FindSimilar, SimilaritySettings

_LOG = logging.getLogger(__name__)


class RunPlan:
    """One run's steps as its options configure them.

    calibration: int8's calibration URIs (calibration_uris), where the caller has them
    already; read from the input otherwise.
    """

    def __init__(
        self,
        opts: EmbeddingOptions,
        run_id: str,
        options: Any,
        calibration: tuple[str, ...] | None = None,
    ):
        self.opts = opts
        self.run_id = run_id
        self.spec = model_spec(opts)
        self.shape = embedding_shape(self.spec)
        self.keep = kept_columns(opts)
        # Read here, in the launching process, and carried to the workers with the step.
        self.labels: LabelList | None = (
            read_labels(opts.zero_shot_labels) if opts.zero_shot_labels else None
        )
        self.stage = run_folder(opts.output, run_id)
        self._temp = options.view_as(GoogleCloudOptions).temp_location
        self._local = is_local(options)
        self.calibration = calibration_uris(opts) if calibration is None else calibration
        # With --skip_existing, the runs whose embeddings the output holds (read while
        # this run holds the output): the only earlier files any step reads.
        self.earlier_runs = (
            current_runs(opts.output, opts.output_format) if opts.skip_existing else ()
        )
        self.context = {
            "run_id": run_id,
            **run_context(opts, self.spec, self.shape, self.calibration),
        }
        self.outputs = optional_outputs(self)
        for output in self.outputs:
            self.context["outputs"] |= output.final_files()
        if not self.spec.pretrained:
            _LOG.warning("--weights random: %s", self.spec.describe_weights())

    @property
    def metadata(self) -> dict[str, str]:
        """How the embeddings were made, as every embedding file records it."""
        made = ("model", "weights", "pooling", "resize", "engine", "precision", "calibration")
        return {key: str(self.context[key]) for key in made if key in self.context}

    def embedded_earlier(self, p: beam.Pipeline) -> beam.PCollection | None:
        """With --skip_existing, the URIs the output already holds."""
        if not self.opts.skip_existing:
            return None
        return p | "Read embedded URIs" >> ReadEmbeddedUris(
            self.opts.output, self.opts.output_format, self.earlier_runs
        )

    @property
    def decoding(self) -> Decoding:
        """How the load step reads and decodes every image (int8's sample too)."""
        opts = self.opts
        return Decoding(
            resize=self.spec.resize(opts.resize),
            jpeg_draft=opts.jpeg_draft,
            max_pixels=opts.max_image_pixels,
            max_bytes=opts.max_image_bytes,
            local_paths=self._local,
        )

    def load_images(self) -> LoadImages:
        return LoadImages(self.decoding, THUMBNAIL_SIZE if self.opts.map else 0)

    def handler(self) -> KerasEmbeddingHandler:
        return KerasEmbeddingHandler(
            self.spec,
            min_batch_size=self.opts.min_batch_size,
            max_batch_size=self.opts.max_batch_size,
            engine=self.opts.engine,
            precision=self.opts.precision,
            calibration=self.calibration_sample(),
        )

    def calibration_sample(self) -> CalibrationSample | None:
        """int8's sample, read and decoded as the load step reads and decodes images."""
        if self.opts.precision != INT8:
            return None
        return CalibrationSample(self.calibration, self.decoding)

    def label_images(self) -> LabelImages:
        return LabelImages(self.spec, self.labels.labels, self.opts.label_template)

    def store(self) -> beam.PTransform:
        opts = self.opts
        return FORMATS[opts.output_format].store(
            opts.output,
            self.stage,
            self.run_id,
            self.shape,
            self.metadata,
            opts.num_shards,
            self.keep,
            labelled=self.labels is not None,
        )

    def publish_plan(self) -> PublishPlan:
        opts = self.opts
        return PublishPlan(
            opts.output,
            self.run_id,
            opts.skip_existing,
            opts.output_format,
            opts.vector_search_output or None,
            {**embedding_metadata(self.context), "run_id": self.run_id},
            self.earlier_runs,
        )

    # The optional outputs, one method each; optional_outputs says which a run writes.

    def count_labels(self) -> CountLabels:
        return CountLabels(self.labels, self.opts.label_template)

    def find_similar(self) -> FindSimilar:
        opts = self.opts
        return FindSimilar(
            opts.output, self.stage, opts.output_format, self.run_id, self.earlier_runs,
            similarity_settings(opts), run_temp_folder(self._temp, opts.output, self.run_id),
        )  # fmt: skip

    def vector_search_files(self) -> WriteVectorSearch:
        opts = self.opts
        return WriteVectorSearch(
            output_path(self.stage, STAGED_VECTORS), opts.vector_search_output, self.run_id,
            self.keep, opts.vector_search_crowding_column, opts.num_shards,
        )  # fmt: skip

    def map_embeddings(self) -> MapEmbeddings:
        opts = self.opts
        return MapEmbeddings(
            opts.output,
            self.stage,
            opts.output_format,
            self.run_id,
            opts.map_sample_size,
            opts.seed,
        )

    def bigquery_load(self) -> LoadIntoBigQuery:
        opts = self.opts
        return LoadIntoBigQuery(
            LoadIntoBigQueryFn(
                parse_table(opts.bigquery_table), opts.output, self.run_id,
                parquet_schema(self.shape, self.metadata, self.keep, self.labels is not None).names,
                opts.bigquery_vector_index,
                this_run_shards=shard_prefix(self.stage, EMBEDDINGS, self.run_id) + "-*.parquet",
                metadata=embedding_metadata(self.context),
                earlier_runs=self.earlier_runs,
            )
        )  # fmt: skip


def optional_outputs(plan: RunPlan) -> list[OptionalOutput]:
    """The optional outputs the run writes, in the order each may read what one before
    it gave (the map shows the neighbours). A new output is one line here."""
    opts = plan.opts
    wanted: list[tuple[Any, Callable[[], OptionalOutput]]] = [
        (plan.labels, plan.count_labels),
        (opts.neighbors or opts.duplicate_threshold, plan.find_similar),
        (opts.vector_search_output, plan.vector_search_files),
        (opts.map, plan.map_embeddings),
        (opts.bigquery_table, plan.bigquery_load),
    ]
    return [make() for asked, make in wanted if asked]


def similarity_settings(opts: EmbeddingOptions) -> SimilaritySettings:
    return SimilaritySettings(
        neighbors=opts.neighbors,
        duplicate_threshold=opts.duplicate_threshold,
        cell_size=opts.similarity_cell_size,
        cells_per_image=opts.similarity_cells_per_image,
        seed=opts.seed,
    )


def model_spec(opts: EmbeddingOptions) -> ModelSpec:
    return ModelSpec.of(opts.model, opts.weights, opts.pooling, opts.seed)


def calibration_uris(opts: EmbeddingOptions) -> tuple[str, ...]:
    """For --precision int8, the input's first CALIBRATION_IMAGES URIs: picked here, once,
    so that every worker process quantises the model on the same images; () otherwise."""
    if opts.precision != INT8:
        return ()
    return first_uris(opts.input, CALIBRATION_IMAGES)


def run_context(
    opts: EmbeddingOptions,
    spec: ModelSpec,
    shape: tuple[int, ...],
    calibration: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What the summary records about how the embeddings were made, and where the files
    every run writes are (RunPlan adds the optional outputs'). calibration: int8's sample,
    recorded as its digest (models.sample_digest), only for int8."""
    files = {
        "embeddings": FORMATS[opts.output_format].embedding_files(opts.output),
        "failures": output_path(opts.output, f"{FAILURES}-*.jsonl"),
        "summary": output_path(opts.output, SUMMARY),
    }
    return {
        "input": opts.input,
        "output": opts.output,
        "output_format": opts.output_format,
        "model": spec.model,
        "weights": spec.describe_weights(),
        "seed": opts.seed,
        "pretrained": spec.pretrained,
        "pooling": spec.pooling,
        "resize": spec.resize(opts.resize).describe(),
        # As asked: each worker process resolves auto, and the metrics count what ran.
        "engine": opts.engine,
        "precision": opts.precision,
        **({"calibration": sample_digest(calibration)} if opts.precision == INT8 else {}),
        "jpeg_draft": opts.jpeg_draft,
        "max_image_pixels": opts.max_image_pixels,
        "max_image_bytes": opts.max_image_bytes,
        "skip_existing": opts.skip_existing,
        "embedding_shape": list(shape),
        "max_failure_fraction": opts.max_failure_fraction,
        "map": opts.map,
        "neighbors": opts.neighbors,
        "duplicate_threshold": opts.duplicate_threshold,
        "keep_columns": list(kept_columns(opts)),
        "outputs": files,
    }
