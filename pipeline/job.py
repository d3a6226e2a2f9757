"""The embedding job: read URIs -> load -> extract -> store (+ map), summarised; run(argv)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from pipeline import preflight
from pipeline.common import NAMESPACE
from pipeline.destinations import (
    LoadIntoBigQuery,
    LoadIntoBigQueryFn,
    WriteVectorSearch,
    parse_table,
    vector_files,
)
from pipeline.destinations import describe_vector_files as describe_vectors
from pipeline.inputs import (
    LoadImages,
    ReadImageUris,
    check_glob,
    count_inputs,
    is_glob,
    keep_columns_layout,
)
from pipeline.lease import release_lease, take_lease
from pipeline.local_runner import (
    LOCAL_RUNNER,
    SMALL_INPUT_ROWS,
    is_local,
    use_local_runner_defaults,
)
from pipeline.models import (
    ExtractEmbeddings,
    KerasEmbeddingHandler,
    ModelSpec,
    ReportProgressFn,
    embedding_shape,
)
from pipeline.options import EmbeddingOptions, kept_columns, parse_options
from pipeline.outputs import (
    COORDINATES,
    DUPLICATES,
    EMBEDDINGS,
    FAILURES,
    FORMATS,
    MAP_PNG,
    NEIGHBORS,
    REPORT_HTML,
    SUMMARY,
    ReadEmbeddedUris,
    WriteFailures,
    embedding_metadata,
    new_run_id,
    output_path,
    parquet_schema,
    run_folder,
    run_temp_folder,
    shard_prefix,
)
from pipeline.publish import STAGED_VECTORS, Publish, PublishPlan, verdict
from pipeline.report import THUMBNAIL_SIZE, MapEmbeddings
from pipeline.similarity import FindSimilar, SimilaritySettings
from pipeline.summary import RunFailedError, Summarise, read_summary

_LOG = logging.getLogger(__name__)


def build_pipeline(
    p: beam.Pipeline, opts: EmbeddingOptions, run_id: str, started_at: float, *, fail_job: bool
) -> None:
    """Adds every step to p; fail_job makes the job itself fail when the run fails.

    Every file goes to the run's own folder first; Publish makes it the output only once
    the run has passed (pipeline/publish.py).
    """
    spec = model_spec(opts)
    shape = embedding_shape(spec)
    context = {"run_id": run_id, **run_context(opts, spec, shape)}
    if not spec.pretrained:
        _LOG.warning("--weights random: %s", spec.describe_weights())
    thumbnail_size = THUMBNAIL_SIZE if opts.map else 0
    handler = KerasEmbeddingHandler(
        spec, min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size
    )
    metadata = {key: str(context[key]) for key in ("model", "weights", "pooling", "resize")}
    keep = kept_columns(opts)
    stage = run_folder(opts.output, run_id)
    store = FORMATS[opts.output_format].store(
        opts.output, stage, run_id, shape, metadata, opts.num_shards, keep
    )

    done = (
        p | "Read embedded URIs" >> ReadEmbeddedUris(opts.output, opts.output_format)
        if opts.skip_existing
        else None
    )
    read = p | "Read URIs" >> ReadImageUris(opts.input, done, keep)
    loaded = read["uris"] | "Load images" >> LoadImages(
        spec.input_size, opts.resize, opts.jpeg_draft, opts.max_image_pixels, thumbnail_size,
        max_bytes=opts.max_image_bytes, local_paths=is_local(p.options),
    )  # fmt: skip
    extracted = loaded["images"] | "Extract embeddings" >> ExtractEmbeddings(handler)
    embeddings = extracted["embeddings"] | "Report progress" >> beam.ParDo(ReportProgressFn())
    stored = embeddings | "Store embeddings" >> store

    failures = (
        read["failed"],
        loaded["failed"],
        extracted["failed"],
        stored["failed"],
    ) | "All failures" >> beam.Flatten()
    staged = [stored["files"], failures | "Dead letter" >> WriteFailures(stage, run_id)]
    similar = None
    if opts.neighbors or opts.duplicate_threshold:
        similar = stored["files"] | "Find similar images" >> FindSimilar(
            opts.output,
            stage,
            opts.output_format,
            run_id,
            opts.skip_existing,
            similarity_settings(opts),
            run_temp_folder(
                p.options.view_as(GoogleCloudOptions).temp_location, opts.output, run_id
            ),
        )
        staged.append(similar["files"])
    parts = {
        "rows": read["rows"],
        "duplicates": read["duplicates"],
        "skipped": read["skipped"],
        "embedded": stored["embedded"],
        "failures": failures,
    }
    if similar is not None:
        parts["similarity"] = similar["description"]
    if opts.vector_search_output:
        vectors = stored["stored"] | "Vector Search files" >> WriteVectorSearch(
            output_path(stage, STAGED_VECTORS),
            opts.vector_search_output,
            run_id,
            keep,
            opts.vector_search_crowding_column,
            opts.num_shards,
        )
        staged.append(vectors | "Vector Search file names" >> beam.FlatMap(list))
        parts["vector_search"] = vectors | "Describe Vector Search files" >> beam.Map(
            describe_vectors,
            beam.pvalue.AsSingleton(stored["embedded"]),
            opts.vector_search_output,
        )
    summary = parts | "Summarise" >> Summarise(context, started_at)
    if opts.map:
        staged.append(
            {
                "embeddings": embeddings,
                "files": stored["files"],
                "failures": failures,
                "summary": summary,
                **({"neighbors": similar["neighbors"]} if similar and opts.neighbors else {}),
                **({"groups": similar["groups"]} if similar and opts.duplicate_threshold else {}),
            }
            | "Map embeddings"
            >> MapEmbeddings(
                opts.output, stage, opts.output_format, run_id, opts.map_sample_size, opts.seed
            )
        )
    staged_files = staged | "Every staged file" >> beam.Flatten()
    publishing = {"summary": summary, "staged": staged_files}
    if opts.bigquery_table:
        # The load replaces or adds to the table, so it runs only once the run has passed
        # and every file is staged; it loads the staged shards.
        passed = summary | "If the run passed" >> beam.FlatMap(
            if_passed, beam.pvalue.AsList(staged_files)
        )
        earlier_rows = done | "Count earlier" >> beam.combiners.Count.Globally() if done else None
        load = LoadIntoBigQueryFn(
            parse_table(opts.bigquery_table),
            opts.output,
            run_id,
            parquet_schema(shape, metadata, keep).names,
            opts.bigquery_vector_index,
            this_run_shards=shard_prefix(stage, EMBEDDINGS, run_id) + "-*.parquet",
            metadata=embedding_metadata(context),
        )
        publishing["bigquery"] = passed | "Load into BigQuery" >> LoadIntoBigQuery(
            load, earlier_rows
        )
    plan = PublishPlan(
        opts.output,
        run_id,
        opts.skip_existing,
        opts.output_format,
        opts.vector_search_output or None,
        {**embedding_metadata(context), "run_id": run_id},
    )
    _ = publishing | "Publish" >> Publish(plan, fail_job)


def if_passed(summary: dict[str, Any], unused_staged: list[str]):
    """One element when the run passed its check, none when it failed."""
    if verdict(summary, None) is None:
        yield None


def similarity_settings(opts: EmbeddingOptions) -> SimilaritySettings:
    return SimilaritySettings(
        neighbors=opts.neighbors,
        duplicate_threshold=opts.duplicate_threshold,
        cell_size=opts.similarity_cell_size,
        cells_per_image=opts.similarity_cells_per_image,
        seed=opts.seed,
    )


def model_spec(opts: EmbeddingOptions) -> ModelSpec:
    return ModelSpec(opts.model, opts.weights, opts.pooling, opts.seed)


def check_before_work(opts: EmbeddingOptions, *, local: bool) -> None:
    """What would otherwise fail only once workers run: input glob and columns, weights,
    the outputs, the BigQuery dataset."""
    if is_glob(opts.input):
        check_glob(opts.input)
    keep = kept_columns(opts)
    if keep:
        keep_columns_layout(opts.input, keep)
    if opts.bigquery_table:
        preflight.check_bigquery_dataset(parse_table(opts.bigquery_table))
    # Before any folder is created; for a local run it may download the ImageNet weights.
    preflight.check_weights(model_spec(opts), local=local)
    preflight.check_output(opts.output)
    if opts.vector_search_output:
        preflight.check_output(opts.vector_search_output, "--vector_search_output")
        preflight.check_vector_search_folder(opts.vector_search_output)


def check_earlier_outputs(opts: EmbeddingOptions) -> None:
    """With --skip_existing, that what is there was made as this run makes it; checked
    once this run holds the output, so that no other run changes it in between."""
    if opts.skip_existing:
        spec = model_spec(opts)
        made = embedding_metadata(run_context(opts, spec, embedding_shape(spec)))
        preflight.check_earlier_outputs(
            opts.output, opts.output_format, kept_columns(opts), opts.bigquery_table, made
        )


def run_context(opts: EmbeddingOptions, spec: ModelSpec, shape: tuple[int, ...]) -> dict[str, Any]:
    """What the summary records about how the embeddings were made."""
    outputs = {
        "embeddings": FORMATS[opts.output_format].embedding_files(opts.output),
        "failures": output_path(opts.output, f"{FAILURES}-*.jsonl"),
        "summary": output_path(opts.output, SUMMARY),
    }
    if opts.neighbors:
        outputs["neighbors"] = output_path(opts.output, f"{NEIGHBORS}-*.parquet")
    if opts.duplicate_threshold:
        outputs["duplicates"] = output_path(opts.output, f"{DUPLICATES}-*.csv")
    if opts.vector_search_output:
        outputs["vector_search"] = vector_files(opts.vector_search_output)
    if opts.bigquery_table:
        outputs["bigquery_table"] = parse_table(opts.bigquery_table).id
    if opts.map:
        outputs |= {
            "map_coordinates": output_path(opts.output, f"{COORDINATES}-*.csv"),
            "map_png": output_path(opts.output, MAP_PNG),
            "report": output_path(opts.output, REPORT_HTML),
        }
    return {
        "input": opts.input,
        "output": opts.output,
        "output_format": opts.output_format,
        "model": spec.model,
        "weights": spec.describe_weights(),
        "pretrained": spec.pretrained,
        "pooling": spec.pooling,
        "resize": opts.resize,
        "jpeg_draft": opts.jpeg_draft,
        "skip_existing": opts.skip_existing,
        "embedding_shape": list(shape),
        "max_failure_fraction": opts.max_failure_fraction,
        "map": opts.map,
        "neighbors": opts.neighbors,
        "duplicate_threshold": opts.duplicate_threshold,
        "keep_columns": list(kept_columns(opts)),
        "outputs": outputs,
    }


def run(argv: Sequence[str]) -> dict[str, Any] | None:
    """Builds and runs the pipeline; on a local runner waits and returns the summary.

    Raises UsageError, InputError or WeightsUnavailableError before any work starts,
    and RunFailedError when a finished local run must not count as a success. On a
    remote runner returns None as soon as the job is submitted.
    """
    options = parse_options(argv)
    opts = options.view_as(EmbeddingOptions)
    local = is_local(options)
    check_before_work(opts, local=local)
    started_at = time.time()
    run_id = new_run_id(started_at)
    take_lease(
        opts.output,
        run_id,
        started_at,
        runner=runner_description(options),
        break_lease=opts.break_lease or None,
        stale_after_s=opts.lease_stale_after_hours * 3600,
        process_bound=local,
    )
    try:
        check_earlier_outputs(opts)
        if local:
            count = count_inputs(opts.input, SMALL_INPUT_ROWS)
            mode = use_local_runner_defaults(options, argv, small_input=count is not None)
            if mode:
                _LOG.info(
                    "local run, %s input rows: %s",
                    count if count is not None else f"over {SMALL_INPUT_ROWS}",
                    "in this process" if mode == "in_memory" else "one worker process per core",
                )
        p = beam.Pipeline(options=options)
        build_pipeline(p, opts, run_id, started_at, fail_job=not local)
        result = p.run()
        if not local:
            return None
        result.wait_until_finish()
    except BaseException:
        # This process is the run (or launched none): nobody else will release the lease.
        release_lease(opts.output, run_id)
        raise
    summary = read_summary(opts.output, run_id)
    summary["metrics"] = counters(result)
    if summary.get("status") == "failed":
        raise RunFailedError(summary["failure_reason"], summary)
    return summary


def runner_description(options) -> str:
    """Who runs, for the lease: the runner, and the job name where there is one."""
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    job_name = options.view_as(GoogleCloudOptions).job_name
    return f"{runner} job {job_name}" if job_name else runner


def counters(result) -> dict[str, int]:
    """This pipeline's Beam counters, summed over steps."""
    totals: dict[str, int] = {}
    for counter_result in result.metrics().query()["counters"]:
        if counter_result.key.metric.namespace == NAMESPACE:
            name = counter_result.key.metric.name
            totals[name] = totals.get(name, 0) + counter_result.committed
    return dict(sorted(totals.items()))
