"""The pipeline: read URIs -> load images -> extract embeddings -> store (+ map), and a summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline import preflight, sinks
from pipeline.backbones import ModelSpec, embedding_shape
from pipeline.mapping import COORDINATES, MAP_PNG, REPORT_HTML, THUMBNAIL_SIZE, MapEmbeddings
from pipeline.metrics import NAMESPACE, counter
from pipeline.model import KerasEmbeddingHandler
from pipeline.options import EmbeddingOptions, parse_options
from pipeline.sinks import (
    ReadEmbeddedUris,
    WriteFailures,
    WriteNpy,
    WriteParquet,
    parquet_schema,
)
from pipeline.sources import ReadImageUris, check_glob, is_glob
from pipeline.summary import WriteSummaryFn, check, read_summary, summarise
from pipeline.transforms import ExtractEmbeddings, LoadImages, ReportProgressFn

_LOG = logging.getLogger(__name__)

LOCAL_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = {
    "FnApiRunner",
    "DirectRunner",
    "SwitchingDirectRunner",
    "BundleBasedDirectRunner",
    "PrismRunner",
    "TestDirectRunner",
}


def use_local_runner_defaults(options: PipelineOptions, argv: Sequence[str]) -> None:
    """With no --runner: Beam's FnApiRunner, one worker process per core.

    Beam's DirectRunner would first try to download the Prism runner; FnApiRunner runs
    offline, and in multi_processing mode each process has its own model and GIL.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is not None:
        return
    standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    if not any(flag.startswith("--direct_running_mode") for flag in argv):
        direct.direct_running_mode = "multi_processing"
    if not any(flag.startswith("--direct_num_workers") for flag in argv):
        direct.direct_num_workers = 0  # 0: one per CPU core


def is_local(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or LOCAL_RUNNER
    return runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS


class CountFailuresFn(beam.DoFn):
    """Counts each failure under failed_<stage> and passes on its stage."""

    def process(self, failure):
        counter(f"failed_{failure.stage}").inc()
        yield failure.stage


def build_pipeline(p: beam.Pipeline, opts: EmbeddingOptions, *, fail_job: bool) -> None:
    """Adds every step to p; fail_job makes the job itself fail on too many failures."""
    started_at = time.time()
    run_id = sinks.new_run_id(started_at)
    spec = model_spec(opts)
    shape = embedding_shape(spec)
    context = {"run_id": run_id, **run_context(opts, spec, shape)}
    if not spec.pretrained:
        _LOG.warning("--weights random: %s", spec.describe_weights())

    done = (
        p | "Read embedded URIs" >> ReadEmbeddedUris(opts.output, opts.output_format)
        if opts.skip_existing
        else None
    )
    read = p | "Read URIs" >> ReadImageUris(opts.input, done)
    loaded = read["uris"] | "Load images" >> LoadImages(
        spec.input_size,
        opts.resize,
        opts.jpeg_draft,
        opts.max_image_pixels,
        thumbnail_size=THUMBNAIL_SIZE if opts.map else 0,
    )
    handler = KerasEmbeddingHandler(
        spec, min_batch_size=opts.min_batch_size, max_batch_size=opts.max_batch_size
    )
    extracted = loaded["images"] | "Extract embeddings" >> ExtractEmbeddings(handler)
    embeddings = extracted["embeddings"] | "Report progress" >> beam.ParDo(ReportProgressFn())
    if opts.output_format == "parquet":
        metadata = {key: str(context[key]) for key in ("model", "weights", "pooling", "resize")}
        schema = parquet_schema(shape, metadata)
        sink = WriteParquet(opts.output, run_id, schema, opts.num_shards, opts.skip_existing)
    else:
        sink = WriteNpy(opts.output, run_id, opts.num_shards, opts.skip_existing)
    stored = embeddings | "Store embeddings" >> sink

    failures = (
        read["failed"],
        loaded["failed"],
        extracted["failed"],
        stored["failed"],
    ) | "All failures" >> beam.Flatten()
    _ = failures | "Dead letter" >> WriteFailures(opts.output, run_id)
    failed_by_stage = (
        failures
        | "Count failures" >> beam.ParDo(CountFailuresFn())
        | "Per stage" >> beam.combiners.Count.PerElement()
    )
    summary = (
        p
        | "Start summary" >> beam.Create([None])
        | "Summarise"
        >> beam.Map(
            summarise,
            rows_with_uri=beam.pvalue.AsSingleton(read["rows"]),
            duplicates=beam.pvalue.AsSingleton(read["duplicates"]),
            skipped=beam.pvalue.AsSingleton(read["skipped"]),
            embedded=beam.pvalue.AsSingleton(stored["embedded"]),
            failed_by_stage=beam.pvalue.AsDict(failed_by_stage),
            context=context,
            started_at=started_at,
        )
        | "Write summary" >> beam.ParDo(WriteSummaryFn(opts.output, fail_job))
    )
    if opts.map:
        _ = {
            "embeddings": embeddings,
            "files": stored["files"],
            "failures": failures,
            "summary": summary,
        } | "Map embeddings" >> MapEmbeddings(
            opts.output, opts.output_format, run_id, opts.map_sample_size, opts.seed
        )


def model_spec(opts: EmbeddingOptions) -> ModelSpec:
    return ModelSpec(opts.model, opts.weights, opts.pooling, opts.seed)


def check_before_work(opts: EmbeddingOptions, *, local: bool) -> None:
    """What would otherwise fail only once workers run: input glob, weights, output."""
    if is_glob(opts.input):
        check_glob(opts.input)
    preflight.check_weights(model_spec(opts), local=local)
    preflight.check_output(opts.output)


def run_context(opts: EmbeddingOptions, spec: ModelSpec, shape: tuple[int, ...]) -> dict[str, Any]:
    """What the summary records about how the embeddings were made."""
    output_files = (
        sinks.output_path(opts.output, f"{sinks.EMBEDDINGS}-*.parquet")
        if opts.output_format == "parquet"
        else sinks.output_path(opts.output, f"{sinks.NPY_DIRECTORY}/*.npy")
    )
    outputs = {
        "embeddings": output_files,
        "failures": sinks.output_path(opts.output, f"{sinks.FAILURES}-*.jsonl"),
        "summary": sinks.output_path(opts.output, sinks.SUMMARY),
    }
    if opts.map:
        outputs |= {
            "map_coordinates": sinks.output_path(opts.output, f"{COORDINATES}-*.csv"),
            "map_png": sinks.output_path(opts.output, MAP_PNG),
            "report": sinks.output_path(opts.output, REPORT_HTML),
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
        "outputs": outputs,
    }


def run(argv: Sequence[str]) -> dict[str, Any] | None:
    """Builds and runs the pipeline; on a local runner waits and returns the summary.

    Raises UsageError, InputError or WeightsUnavailableError before any work starts,
    and RunFailedError when a finished local run must not count as a success. On a
    remote runner returns None as soon as the job is submitted.
    """
    options = parse_options(argv)
    use_local_runner_defaults(options, argv)
    local = is_local(options)
    opts = options.view_as(EmbeddingOptions)
    check_before_work(opts, local=local)
    p = beam.Pipeline(options=options)
    build_pipeline(p, opts, fail_job=not local)
    result = p.run()
    if not local:
        return None
    result.wait_until_finish()
    summary = read_summary(opts.output)
    summary["metrics"] = counters(result)
    check(summary)
    return summary


def counters(result) -> dict[str, int]:
    """This pipeline's Beam counters, summed over steps."""
    totals: dict[str, int] = {}
    for counter_result in result.metrics().query()["counters"]:
        if counter_result.key.metric.namespace == NAMESPACE:
            name = counter_result.key.metric.name
            totals[name] = totals.get(name, 0) + counter_result.committed
    return dict(sorted(totals.items()))
