"""The embedding job: read, load, extract, store, the optional outputs, the summary and
the publish step; run(argv) checks, takes the lease and runs it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

from pipeline.common import NAMESPACE
from pipeline.destinations import parse_table
from pipeline.inputs import (
    CountFetched,
    ReadImageUris,
    check_glob,
    count_inputs,
    is_glob,
    is_manifest,
    keep_columns_layout,
    lists_shards,
)
from pipeline.local_runner import (
    LOCAL_RUNNER,
    SMALL_INPUT_ROWS,
    is_local,
    use_local_runner_defaults,
)
from pipeline.models import ExtractEmbeddings, ReportProgressFn, ScoreHead
from pipeline.options import EmbeddingOptions, UsageError, kept_columns, parse_options
from pipeline.outputs import (
    JournalError,
    OptionalOutput,
    UnfinishedPublishError,
    WriteFailures,
    new_run_id,
    roll_forward,
)
from pipeline.plan import (
    RunPlan,
    calibration_uris,
    model_spec,
    provenance,
    read_score_heads,
    row_columns,
)
from pipeline.run import (
    Publish,
    RunFailedError,
    Summarise,
    preflight,
    read_summary,
    release_lease,
    take_lease,
    verdict,
)

_LOG = logging.getLogger(__name__)


def build_pipeline(
    p: beam.Pipeline,
    opts: EmbeddingOptions,
    run_id: str,
    started_at: float,
    *,
    fail_job: bool,
    calibration: tuple[str, ...] | None = None,
    heads: tuple[ScoreHead, ...] | None = None,
) -> None:
    """Adds every step to p, in the order the data flows; fail_job makes the job itself
    fail when the run fails; calibration: int8's sample (plan.calibration_uris), if read.

    Every file goes to the run's own folder first; Publish makes it the output only once
    the run has passed (pipeline/run/publish.py).
    """
    plan = RunPlan(opts, run_id, p.options, calibration, heads)
    earlier = plan.embedded_earlier(p)
    read = p | "Read URIs" >> ReadImageUris(
        opts.input, earlier, plan.keep, opts.uri_column, plan.decoding
    )
    loaded = read["uris"] | "Load images" >> plan.load_images()
    extracted = loaded["images"] | "Extract embeddings" >> ExtractEmbeddings(plan.handler())
    embeddings = extracted["embeddings"] | "Report progress" >> beam.ParDo(ReportProgressFn())
    if plan.labels:
        embeddings = embeddings | "Label images" >> plan.label_images()
    stored = embeddings | "Store embeddings" >> plan.store()
    steps = (read, loaded, extracted, stored)
    failures = tuple(step["failed"] for step in steps) | "All failures" >> beam.Flatten()
    dead_letter = failures | "Dead letter" >> WriteFailures(plan.target.stage, run_id)

    # A run that decides what to keep stages its record files once decided (KeepDecisions).
    record_files = [] if plan.columns.curated else [stored["files"]]
    run = RunOutputs(
        {"embeddings": embeddings, "failures": failures, **stored, "earlier": earlier},
        staged=[*record_files, dead_letter],
    )
    described = run.add([output for output in plan.outputs if not run.waits(output)])
    counts = {name: read[name] for name in ("rows", "duplicates", "skipped")}
    counts["fetched"] = loaded["images"] | "Fetched" >> CountFetched()
    parts = {
        **counts,
        "embedded": stored["embedded"],
        "failures": failures,
        "engines_ran": extracted["engines_ran"],
        **described,
    }
    run["summary"] = parts | "Summarise" >> Summarise(plan.context, started_at)
    judged = run.add([output for output in plan.outputs if run.waits(output)])
    publishing = {"summary": run["summary"], "staged": run.staged(), **judged}
    _ = publishing | "Publish" >> Publish(plan.publish_plan(), fail_job)


class RunOutputs:
    """The run's PCollections by name, for the optional outputs to read, and every file
    name staged so far."""

    # What an output waits for: the summary, or the run's verdict.
    AFTER_SUMMARY = frozenset({"summary", "passed"})

    def __init__(self, made: dict[str, beam.PCollection | None], staged: list):
        self._made = {name: value for name, value in made.items() if value is not None}
        self._staged = list(staged)
        self._flattened: dict[int, beam.PCollection] = {}

    def __getitem__(self, name: str) -> beam.PCollection:
        return self._made[name]

    def __setitem__(self, name: str, value: beam.PCollection) -> None:
        self._made[name] = value

    def waits(self, output: OptionalOutput) -> bool:
        return bool(self.AFTER_SUMMARY & set(output.reads))

    def staged(self) -> beam.PCollection:
        """Every file name staged so far, as one PCollection."""
        count = len(self._staged)
        if count not in self._flattened:
            label = "Every staged file" + (f" ({count})" if self._flattened else "")
            self._flattened[count] = tuple(self._staged) | label >> beam.Flatten()
        return self._flattened[count]

    def add(self, outputs: list[OptionalOutput]) -> dict[str, beam.PCollection]:
        """Adds each output's steps; returns their descriptions by name."""
        described = {}
        for output in outputs:
            if "passed" in output.reads and "passed" not in self._made:
                # The verdict waits for every file staged so far.
                self._made["passed"] = self._made["summary"] | "If the run passed" >> beam.FlatMap(
                    if_passed, beam.pvalue.AsList(self.staged())
                )
            reads = {name: self._made[name] for name in output.reads if name in self._made}
            made = dict(reads | output.step >> output)
            if "files" in made:
                self._staged.append(made.pop("files"))
            if "description" in made:
                described[output.name] = made.pop("description")
            self._made |= made
        return described


def if_passed(summary: dict[str, Any], unused_staged: list[str]):
    """One element when the run passed its check, none when it failed."""
    if verdict(summary, None) is None:
        yield None


def check_input(opts: EmbeddingOptions) -> None:
    """That a glob matches, and that the input has its URI column and the kept columns."""
    if is_glob(opts.input):
        check_glob(opts.input)
    keep = kept_columns(opts)
    # A plain CSV is read only by the workers: at launch, its columns are all there is.
    if keep or opts.uri_column or is_manifest(opts.input):
        keep_columns_layout(opts.input, keep, opts.uri_column)


def check_before_work(opts: EmbeddingOptions, *, local: bool) -> None:
    """What would otherwise fail only once workers run: the labels, weights, the outputs,
    the BigQuery dataset."""
    if opts.zero_shot_labels:
        preflight.check_labels(opts.zero_shot_labels)
    if opts.bigquery_table:
        preflight.check_bigquery_dataset(parse_table(opts.bigquery_table))
    # Before any folder is created; for a local run it may download the ImageNet weights.
    preflight.check_weights(model_spec(opts), local=local)
    preflight.check_output(opts.output)
    if opts.vector_search_output:
        preflight.check_output(opts.vector_search_output, "--vector_search_output")
        preflight.check_vector_search_folder(opts.vector_search_output)


def check_earlier_outputs(
    opts: EmbeddingOptions,
    calibration: tuple[str, ...] = (),
    heads: tuple[ScoreHead, ...] = (),
) -> None:
    """With --skip_existing, that what is there was made as this run makes it (for int8,
    on the same calibration sample; with the same score heads); checked once this run
    holds the output, so that no other run changes it in between."""
    if opts.skip_existing:
        preflight.check_earlier_outputs(
            opts.output,
            opts.output_format,
            row_columns(opts, heads),
            opts.bigquery_table,
            provenance(opts, calibration, heads),
        )


def run(argv: Sequence[str]) -> dict[str, Any] | None:
    """Builds and runs the pipeline; on a local runner waits and returns the summary.

    Raises UsageError, InputError or WeightsUnavailableError before any work starts,
    and RunFailedError when a finished local run must not count as a success. On a
    remote runner returns None as soon as the job is submitted.
    """
    options = parse_options(argv)
    opts = options.view_as(EmbeddingOptions)
    local = is_local(options)
    check_input(opts)
    heads = read_score_heads(opts)
    # Picked once, here: every worker process quantises int8 on these same images.
    calibration = calibration_uris(opts)
    check_before_work(opts, local=local)
    if opts.compare_with:
        preflight.check_compared_output(opts.compare_with, provenance(opts, calibration, heads))
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
        finish_earlier_publish(opts.output)
        check_earlier_outputs(opts, calibration, heads)
        if local:
            count = count_inputs(opts.input, SMALL_INPUT_ROWS, opts.uri_column)
            mode = use_local_runner_defaults(options, argv, small_input=count is not None)
            if mode:
                _LOG.info(
                    "local run, %s: in this process, %s",
                    _input_size(opts, count),
                    "one thread" if mode == "in_memory" else "a bundle thread per CPU core",
                )
        p = beam.Pipeline(options=options)
        build_pipeline(
            p, opts, run_id, started_at, fail_job=not local, calibration=calibration, heads=heads
        )
        result = p.run()
        if not local:
            return None
        result.wait_until_finish()
    except BaseException:
        # This process is the run (or launched none): nobody else will release the lease.
        release_lease(opts.output, run_id)
        raise
    # A publish that stopped midway (a file that could not be deleted) is tried once more.
    finish_earlier_publish(opts.output, after_run=run_id)
    summary = read_summary(opts.output, run_id)
    summary["metrics"] = counters(result)
    if summary.get("status") == "failed":
        raise RunFailedError(summary["failure_reason"], summary)
    return summary


def _input_size(opts: EmbeddingOptions, count: int | None) -> str:
    """The input's size as the launch counted it (count_inputs), for the log."""
    if lists_shards(opts.input, opts.uri_column):
        return "WebDataset shards"
    size = count if count is not None else f"over {SMALL_INPUT_ROWS}"
    glob_of_files = is_glob(opts.input) and not is_manifest(opts.input)
    return f"{size} {'files matched' if glob_of_files else 'input rows'}"


def finish_earlier_publish(output: str, after_run: str | None = None) -> None:
    """Finishes a publish that a crash or a failed delete left half done, before anything
    reads the output: UsageError for a journal this pipeline did not write,
    RunFailedError for one that cannot be finished now (after_run: this run's own)."""
    try:
        roll_forward(output)
    except JournalError as error:
        raise UsageError(str(error)) from error
    except UnfinishedPublishError as error:
        if after_run:
            message = f"run {after_run} passed and summary.json names it, but {error}"
            raise RunFailedError(message, read_summary(output, after_run)) from error
        raise RunFailedError(str(error)) from error


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
