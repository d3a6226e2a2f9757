"""What a run's options make of each step: the model, the store, and the optional outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions

from pipeline.destinations import (
    LoadIntoBigQuery,
    TableLoad,
    VectorSearchSettings,
    WriteVectorSearch,
    parse_table,
)
from pipeline.inputs import DEFAULT_USER_AGENT, Decoding, FetchSettings, LoadImages, first_uris
from pipeline.local_runner import is_local
from pipeline.models import (
    CALIBRATION_IMAGES,
    INT8,
    MIN_CALIBRATION_IMAGES,
    CalibrationSample,
    KerasEmbeddingHandler,
    LabelImages,
    LabelList,
    ModelSpec,
    ScoreHead,
    embedding_shape,
    read_labels,
    recorded_heads,
    reference,
    sample_digest,
)
from pipeline.options import (
    EmbeddingOptions,
    UsageError,
    allowed_networks,
    compare_threshold,
    kept_columns,
    score_heads,
)
from pipeline.outputs import (
    FAILURES,
    FORMATS,
    IN_NPY_METADATA,
    IN_SUMMARY,
    SUMMARY,
    CountLabels,
    DescribeScores,
    OptionalOutput,
    Provenance,
    ReadEmbeddedUris,
    RowColumns,
    RunTarget,
    current_runs,
    output_path,
    parquet_schema,
    recorded_collection,
    run_temp_folder,
)
from pipeline.report import THUMBNAIL_SIZE, MapEmbeddings
from pipeline.run import PublishPlan, preflight
from pipeline.similarity import (
    CompareSettings,
    CompareWith,
    FindSimilar,
    KeepDecisions,
    SimilaritySettings,
)

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
        heads: tuple[ScoreHead, ...] | None = None,
    ):
        self.opts = opts
        self.spec = model_spec(opts)
        self.keep = kept_columns(opts)
        # Read here, in the launching process, and carried to the workers with the step.
        self.labels: LabelList | None = (
            read_labels(opts.zero_shot_labels) if opts.zero_shot_labels else None
        )
        self.heads = read_score_heads(opts) if heads is None else heads
        self.columns = row_columns(opts, self.heads)
        self._temp = options.view_as(GoogleCloudOptions).temp_location
        self.calibration = calibration_uris(opts) if calibration is None else calibration
        self.decoding = decoding(opts, self.spec, local_paths=is_local(options))
        self.provenance = provenance(opts, self.calibration, self.heads)
        # With --skip_existing, the runs whose embeddings the output holds (read while
        # this run holds the output).
        earlier = current_runs(opts.output, opts.output_format) if opts.skip_existing else ()
        self.target = RunTarget(opts.output, run_id, opts.output_format, earlier)
        self.context = {"run_id": run_id, **run_context(opts, self.provenance)}
        self.outputs = optional_outputs(self)
        for output in self.outputs:
            self.context["outputs"] |= output.final_files()
        if not self.spec.pretrained:
            _LOG.warning("--weights random: %s", self.spec.describe_weights())

    def embedded_earlier(self, p: beam.Pipeline) -> beam.PCollection | None:
        """With --skip_existing, the URIs the output already holds."""
        if not self.opts.skip_existing:
            return None
        return p | "Read embedded URIs" >> ReadEmbeddedUris(self.target)

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
            heads=tuple(reference(head) for head in self.heads),
        )

    def calibration_sample(self) -> CalibrationSample | None:
        """int8's sample, read and decoded as the load step reads and decodes images."""
        if self.opts.precision != INT8:
            return None
        return CalibrationSample(self.calibration, self.decoding)

    def label_images(self) -> LabelImages:
        return LabelImages(self.spec, self.labels.labels, self.opts.label_template)

    def store(self) -> beam.PTransform:
        store_format = FORMATS[self.opts.output_format]
        return store_format.store(self.target, self.provenance, self.opts.num_shards, self.columns)

    def publish_plan(self) -> PublishPlan:
        opts = self.opts
        return PublishPlan(
            self.target,
            incremental=opts.skip_existing,
            vector_folder=opts.vector_search_output or None,
            npy_metadata={**self.provenance.written(IN_NPY_METADATA), "run_id": self.target.run_id},
        )

    # The optional outputs, one method each; optional_outputs says which a run writes.

    def count_labels(self) -> CountLabels:
        return CountLabels(self.labels, self.opts.label_template)

    def describe_scores(self) -> DescribeScores:
        return DescribeScores(self.columns.scores)

    def find_similar(self) -> FindSimilar:
        temp = run_temp_folder(self._temp, self.target.output, self.target.run_id)
        return FindSimilar(self.target, similarity_settings(self.opts), temp)

    def compare_with(self) -> CompareWith:
        temp = run_temp_folder(self._temp, self.target.output, self.target.run_id)
        return CompareWith(self.target, compare_settings(self.opts), temp)

    def keep_decisions(self) -> KeepDecisions:
        return KeepDecisions(self.target)

    def vector_search_files(self) -> WriteVectorSearch:
        opts = self.opts
        return WriteVectorSearch(
            self.target,
            VectorSearchSettings(
                opts.vector_search_output,
                self.keep,
                opts.vector_search_crowding_column,
                opts.num_shards,
                self.columns.scores,
                self.columns.labelled,
            ),
        )

    def map_embeddings(self) -> MapEmbeddings:
        return MapEmbeddings(self.target, self.opts.map_sample_size, self.opts.seed)

    def bigquery_load(self) -> LoadIntoBigQuery:
        opts = self.opts
        schema = parquet_schema(
            self.provenance.embedding_shape, self.provenance.shard_metadata(), self.columns
        )
        load = TableLoad(
            parse_table(opts.bigquery_table),
            self.target,
            schema.names,
            self.provenance,
            vector_index=opts.bigquery_vector_index,
            rewrites_earlier=self.columns.curated,
        )
        return LoadIntoBigQuery(load)


def optional_outputs(plan: RunPlan) -> list[OptionalOutput]:
    """The optional outputs the run writes, in the order each may read what one before
    it gave (the map shows the neighbours). A new output is one line here."""
    opts = plan.opts
    wanted: list[tuple[Any, Callable[[], OptionalOutput]]] = [
        (plan.labels, plan.count_labels),
        (plan.heads, plan.describe_scores),
        (opts.neighbors or opts.duplicate_threshold, plan.find_similar),
        (opts.compare_with, plan.compare_with),
        (plan.columns.curated, plan.keep_decisions),
        (opts.vector_search_output, plan.vector_search_files),
        (opts.map, plan.map_embeddings),
        (opts.bigquery_table, plan.bigquery_load),
    ]
    return [make() for asked, make in wanted if asked]


def row_columns(opts: EmbeddingOptions, heads: tuple[ScoreHead, ...]) -> RowColumns:
    """The extra columns the run's rows carry: labels, scores, kept columns, and keep and
    drop_reason when the run decides what to keep (--duplicate_threshold, --compare_with)."""
    return RowColumns(
        kept_columns(opts),
        bool(opts.zero_shot_labels),
        tuple(head.name for head in heads),
        curated=bool(opts.duplicate_threshold or opts.compare_with),
    )


def similarity_settings(opts: EmbeddingOptions) -> SimilaritySettings:
    return SimilaritySettings(
        neighbors=opts.neighbors,
        duplicate_threshold=opts.duplicate_threshold,
        cell_size=opts.similarity_cell_size,
        cells_per_image=opts.similarity_cells_per_image,
        seed=opts.seed,
    )


def compare_settings(opts: EmbeddingOptions) -> CompareSettings:
    """--compare_with's search, with the other output's format and runs as its summary.json
    names them (read while building the graph, after the launch checked them)."""
    other_format, other_runs = recorded_collection(opts.compare_with)
    return CompareSettings(
        other=opts.compare_with,
        other_format=other_format,
        other_runs=other_runs,
        threshold=compare_threshold(opts),
        matches=opts.compare_matches,
        cell_size=opts.similarity_cell_size,
        cells_per_image=opts.similarity_cells_per_image,
        seed=opts.seed,
    )


def model_spec(opts: EmbeddingOptions) -> ModelSpec:
    return ModelSpec.of(opts.model, opts.weights, opts.pooling, opts.seed)


def calibration_uris(opts: EmbeddingOptions) -> tuple[str, ...]:
    """For --precision int8, the input's first CALIBRATION_IMAGES URIs: picked here, once,
    so that every worker process quantises the model on the same images; () otherwise.
    UsageError when the input lists fewer than calibration needs."""
    if opts.precision != INT8:
        return ()
    uris = first_uris(opts.input, CALIBRATION_IMAGES, opts.uri_column)
    if len(uris) < MIN_CALIBRATION_IMAGES:
        raise UsageError(
            f"--precision int8 calibrates on at least {MIN_CALIBRATION_IMAGES} images, and "
            f"the input lists {len(uris)}: use --precision bfloat16 or float32 for so few"
        )
    return uris


def decoding(opts: EmbeddingOptions, spec: ModelSpec, *, local_paths: bool) -> Decoding:
    """How the load step reads and decodes every image (int8's sample too)."""
    return Decoding(
        resize=spec.resize(opts.resize),
        jpeg_draft=opts.jpeg_draft,
        max_pixels=opts.max_image_pixels,
        max_bytes=opts.max_image_bytes,
        local_paths=local_paths,
        fetching=fetch_settings(opts),
    )


def fetching_record(settings: FetchSettings) -> dict[str, Any]:
    """How the run fetched http(s) URIs, as its summary records it: whether it honoured
    opt-outs above all."""
    return {
        "allow_private_addresses": list(settings.allowed_networks),
        "max_connections_per_host": settings.max_connections_per_host,
        "requests_per_second_per_host": settings.requests_per_second_per_host,
        "fetch_deadline_seconds": settings.deadline_seconds,
        "ignore_opt_outs": settings.ignore_opt_outs,
        "user_agent": settings.user_agent or DEFAULT_USER_AGENT,
    }


def fetch_settings(opts: EmbeddingOptions) -> FetchSettings:
    """How the workers fetch http(s) URIs: the Fetching options."""
    return FetchSettings(
        allowed_networks=allowed_networks(opts),
        max_connections_per_host=opts.max_connections_per_host,
        requests_per_second_per_host=opts.requests_per_second_per_host,
        deadline_seconds=opts.fetch_deadline_seconds,
        ignore_opt_outs=opts.ignore_opt_outs,
        user_agent=opts.fetch_user_agent,
        max_bytes=opts.max_image_bytes,
    )


def provenance(
    opts: EmbeddingOptions,
    calibration: tuple[str, ...] = (),
    heads: tuple[ScoreHead, ...] = (),
) -> Provenance:
    """How the run makes its embeddings. calibration: int8's sample, recorded as its
    digest (models.sample_digest), only for int8; heads: the score heads read."""
    spec = model_spec(opts)
    return Provenance.made(
        spec,
        decoding(opts, spec, local_paths=False),
        engine=opts.engine,
        precision=opts.precision,
        calibration=sample_digest(calibration) if opts.precision == INT8 else "",
        shape=embedding_shape(spec),
        score_heads=recorded_heads(heads),
    )


def read_score_heads(opts: EmbeddingOptions) -> tuple[ScoreHead, ...]:
    """--score_head's heads, read and checked against the model (UsageError otherwise)."""
    return preflight.check_score_heads(score_heads(opts), model_spec(opts))


def run_context(opts: EmbeddingOptions, made: Provenance) -> dict[str, Any]:
    """What the summary records: the run's input and output, how the embeddings were made,
    the run's settings, and where the files every run writes are (RunPlan adds the
    optional outputs')."""
    files = {
        "embeddings": FORMATS[opts.output_format].embedding_files(opts.output),
        "failures": output_path(opts.output, f"{FAILURES}-*.jsonl"),
        "summary": output_path(opts.output, SUMMARY),
    }
    return {
        "input": opts.input,
        "uri_column": opts.uri_column,
        "output": opts.output,
        "output_format": opts.output_format,
        **made.written(IN_SUMMARY),
        "skip_existing": opts.skip_existing,
        "max_failure_fraction": opts.max_failure_fraction,
        "max_failures": opts.max_failures,
        "fetching": fetching_record(fetch_settings(opts)),
        "map": opts.map,
        "neighbors": opts.neighbors,
        "duplicate_threshold": opts.duplicate_threshold,
        "compare_with": opts.compare_with,
        "keep_columns": list(kept_columns(opts)),
        "outputs": files,
    }
