"""Checks made before any work is scheduled: the weights can be had, the output written.

Each failure is one line naming the option and the reason (exit 2), instead of a job
that starts workers and fails at its first or last step.
"""

from __future__ import annotations

import os
import uuid

from apache_beam.io.filesystems import FileSystems

from pipeline.common import read_json
from pipeline.destinations import TableName, check_dataset, check_table_matches, foreign_files
from pipeline.models import (
    BACKBONES,
    BAKED_PRESETS,
    CALIBRATION_IMAGES,
    KERAS_HUB,
    HeadError,
    HeadSpec,
    LabelList,
    LabelsError,
    ModelSpec,
    ScoreHead,
    WeightsUnavailableError,
    baked_preset,
    check_preset_folder,
    check_weights_file,
    embedding_shape,
    ensure_imagenet,
    read_head,
    read_labels,
)
from pipeline.options import UsageError
from pipeline.outputs import (
    FORMATS,
    KEEP_COLUMNS,
    LABEL_COLUMNS,
    SUMMARY,
    Provenance,
    RowColumns,
    current_record_files,
    current_runs,
    matching_files,
    of_runs,
    output_path,
    recorded_collection,
    run_of_shard,
)


def check_weights(spec: ModelSpec, *, local: bool) -> None:
    """Raises WeightsUnavailableError unless the workers will find the weights.

    A weights file is checked by its HDF5 layout, a preset folder by its config. ImageNet
    weights and pretrained presets are fetched into Keras's and keras-hub's caches for a
    local run; a remote run's workers take them from the image, whose build fetches
    them (Dockerfile).
    """
    if spec.weights == "random":
        return
    if spec.from_file:
        if not local and FileSystems.get_scheme(spec.weights) in (None, "file"):
            raise WeightsUnavailableError(
                f"--weights {spec.weights} is on this machine, which a remote run's "
                "workers cannot read; copy it to Cloud Storage and give its gs:// path"
            )
        if spec.backbone.library == KERAS_HUB:
            check_preset_folder(spec.weights, spec.model, spec.backbone)
        else:
            check_weights_file(spec.weights, spec.model, spec.backbone.layout)
    elif spec.backbone.library == KERAS_HUB:
        check_pretrained_preset(spec.model, local=local)
    elif local:
        ensure_imagenet(spec.model, spec.backbone.imagenet)
    # Otherwise the workers' image holds them: its build fetches and loads them.


def check_pretrained_preset(model: str, *, local: bool) -> None:
    """The image's copy of the preset, or else (locally) keras-hub's download of it into
    its cache, where the workers' from_preset finds it; raises WeightsUnavailableError."""
    if baked_preset(model):
        return
    handle = BACKBONES[model].preset
    if not local:
        if os.environ.get(BAKED_PRESETS):  # the template's own image, without this model
            raise WeightsUnavailableError(
                f"--model {model} is not baked into this image (its presets are in "
                f"{os.environ[BAKED_PRESETS]}); rebuild the image with {model} in the "
                "PRESETS build argument (cloudbuild.yaml: _PRESETS), or give --weights a "
                "gs:// preset folder"
            )
        return  # a job submitted from elsewhere: its workers download the preset
    import kagglehub  # keras-hub's own loader for its presets; no TensorFlow

    try:
        kagglehub.model_download(handle.removeprefix("kaggle://"))
    except Exception as error:
        raise WeightsUnavailableError(
            f"cannot download the pretrained preset of {model} ({handle}: "
            f"{type(error).__name__}: {_first_line(error)}); give --weights a preset folder "
            "you have (local or gs://), or --weights random for an offline smoke run"
        ) from error


def check_labels(value: str) -> LabelList:
    """--zero_shot_labels read (a file through Beam's FileSystems); raises UsageError for a file
    that cannot be read, no labels, or too many."""
    try:
        return read_labels(value)
    except LabelsError as error:
        raise UsageError(str(error)) from None


def check_score_heads(heads: tuple[HeadSpec, ...], spec: ModelSpec) -> tuple[ScoreHead, ...]:
    """Each --score_head read as data (no pickle, nothing run) and checked against the
    model: UsageError for a file that is not a head's safetensors, a head made for
    another model, or one that takes another embedding size."""
    read = []
    for head in heads:
        try:
            found = read_head(head)
            found.check_fits(spec.model, embedding_shape(spec))
        except HeadError as error:
            raise UsageError(str(error)) from None
        read.append(found)
    return tuple(read)


def check_output(output: str, flag: str = "--output") -> None:
    """Raises UsageError unless a file can be created and deleted under output.

    A local folder is created if missing; a gs:// bucket must exist.
    """
    probe = FileSystems.join(output, f".write-probe-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as handle:
            handle.write(b"probe")
    except Exception as error:
        raise UsageError(
            f"{flag} {output}: cannot write there ({_reason(error)}); give a folder or "
            "gs:// prefix in which you (or the job's service account) may create and "
            "delete files"
        ) from error
    try:
        FileSystems.delete([probe])
    except Exception as error:
        # Re-runs delete earlier runs' shards, so an output that keeps files cannot work.
        raise UsageError(
            f"{flag} {output}: files can be created there but not deleted "
            f"({_reason(error)}; the probe {probe} is left behind); the pipeline replaces "
            "earlier runs' files, so it needs delete permission (and no retention policy)"
        ) from error


def check_earlier_outputs(
    output: str,
    output_format: str,
    columns: RowColumns,
    bigquery_table: str,
    made: Provenance,
) -> None:
    """With --skip_existing, raises UsageError unless the embeddings already there were
    made as this run would make them (model, weights, pooling, resize, shape, score
    heads), are labelled as it labels (--zero_shot_labels or not) and keep the same
    columns (one folder must hold one table), and, for a BigQuery load, are all
    in the current layout and the table's were made as this run's are, in the same
    --output_format."""
    _check_earlier_format(output, output_format)
    try:
        runs = current_runs(output, output_format)
    except ValueError as error:
        raise UsageError(f"--skip_existing: {error}") from error
    if output_format == "parquet" and bigquery_table:
        legacy = of_runs(matching_files([FORMATS["parquet"].legacy_files(output)]), runs)
        if legacy:
            raise UsageError(
                f"--bigquery_table with --skip_existing: {output} holds shards in the earlier "
                f"layout, such as {legacy[0]}, which lack the columns the table has; run "
                "once without --skip_existing (or without --bigquery_table) first"
            )
    records = current_record_files(output, output_format, runs)
    _check_earlier_files(output, output_format, records, columns, made)
    if bigquery_table:
        try:
            check_table_matches(bigquery_table, made)
        except ValueError as error:
            raise UsageError(str(error)) from error


def _check_earlier_format(output: str, output_format: str) -> None:
    summary = read_json(output_path(output, SUMMARY)) or {}
    earlier = summary.get("output_format", output_format)
    if earlier != output_format:
        raise UsageError(
            f"--skip_existing: the embeddings under {output} are --output_format {earlier}, "
            f"this run's would be {output_format}; one output holds embeddings made one way, "
            f"so give --output_format {earlier}, another --output, or run without "
            "--skip_existing to replace them"
        )


def _check_earlier_files(
    output: str,
    output_format: str,
    records: list[str],
    columns: RowColumns,
    made: Provenance,
) -> None:
    """records: the record files of the runs summary.json names."""
    if not records:
        return
    stored_format = FORMATS[output_format]
    names = stored_format.column_names(records[-1])
    earlier_labelled = set(LABEL_COLUMNS) <= set(names)
    labelled = columns.labelled
    if earlier_labelled != labelled:
        were, this = ("were", "would not be") if earlier_labelled else ("were not", "would be")
        raise UsageError(
            f"--skip_existing: the embeddings under {output} {were} labelled (--zero_shot_labels), "
            f"this run's {this}; label as they were, or run without --skip_existing to "
            "replace them"
        )
    # Earlier rows without keep and drop_reason get them: a curating run rewrites them all.
    own = {*stored_format.columns, *columns.labels, *columns.scores, *KEEP_COLUMNS}
    earlier = tuple(name for name in names if name not in own)
    if earlier != columns.kept:
        raise UsageError(
            f"--skip_existing: the embeddings under {output} keep the columns "
            f"{list(earlier)}, this run would keep {list(columns.kept)}; give the same "
            "--keep_columns, or run without --skip_existing to replace them"
        )
    for run_id, record_file in first_record_per_run(records).items():
        differ = made.differences(stored_format.recorded(output, run_id, record_file))
        if set(differ) == {"calibration"}:
            theirs, ours = differ["calibration"]
            raise UsageError(
                f"--skip_existing: the int8 embeddings under {output} (run {run_id}) were "
                f"quantised on another calibration sample (digest {theirs[:12]} there, "
                f"{ours[:12]} here: the input's first {CALIBRATION_IMAGES} URIs differ); list "
                "the same images first, give another --output, or run without --skip_existing"
            )
        if differ:
            raise UsageError(
                f"--skip_existing: the embeddings under {output} (run {run_id}, "
                f"{record_file}) were made otherwise: {described(differ)}; one output holds "
                "embeddings of one model, so give another --output, or run without "
                "--skip_existing to replace them"
            )
    # After how they were made, which matters more.
    if set(KEEP_COLUMNS) <= set(names) and not columns.curated:
        raise UsageError(
            f"--skip_existing: the embeddings under {output} carry keep and drop_reason, "
            "decided over every image with --duplicate_threshold or --compare_with; this run "
            "would not decide them again, so new images could duplicate kept ones: give "
            "those options as before, or run without --skip_existing to replace them"
        )


def described(differ: dict[str, tuple]) -> str:
    """Provenance.differences as a refusal names them: each value there and here."""
    return "; ".join(f"{key} {theirs} there, {ours} here" for key, (theirs, ours) in differ.items())


def check_compared_output(other: str, made: Provenance) -> None:
    """--compare_with: raises UsageError unless the other output holds embeddings of runs
    its summary.json names, made as this run makes them (every compared field but the
    score heads, which add columns, not other embeddings; for int8, the same
    calibration sample). Each run's first record file is checked as well as the summary."""
    try:
        summary = read_json(output_path(other, SUMMARY))
    except Exception as error:
        raise UsageError(
            f"--compare_with {other}: {SUMMARY} cannot be read ({_reason(error)})"
        ) from error
    if summary is None:
        raise UsageError(
            f"--compare_with {other}: holds no {SUMMARY}, so it is no output of a finished "
            "run; give the --output of a run that passed"
        )
    try:
        output_format, runs = recorded_collection(other)
    except ValueError as error:
        raise UsageError(f"--compare_with {other}: {error}") from error
    records = current_record_files(other, output_format, runs)
    if not records:
        raise UsageError(
            f"--compare_with {other}: holds no embeddings of the runs its {SUMMARY} names "
            "(no record files); give the --output of a run that passed"
        )
    differ = made.differences(summary)
    stored_format = FORMATS[output_format]
    for run_id, record_file in first_record_per_run(records).items():
        for key, value in made.differences(
            stored_format.recorded(other, run_id, record_file)
        ).items():
            differ.setdefault(key, value)
    differ.pop("score_heads", None)
    if differ:
        raise UsageError(
            f"--compare_with {other}: its embeddings were made otherwise: {described(differ)}; "
            "only embeddings made the same way compare, so embed both collections with the "
            "same --model, --weights, --pooling, --resize and --precision"
        )


def first_record_per_run(records: list[str]) -> dict[str, str]:
    """The first record file of each run among shard names NAME-RUN-SSSSS-of-NNNNN."""
    runs: dict[str, str] = {}
    for path in records:
        run = run_of_shard(path)
        if run:
            runs.setdefault(run, path)
    return runs


def check_vector_search_folder(folder: str) -> None:
    """Raises UsageError if the folder holds files Vector Search would read as input
    that this pipeline did not write."""
    foreign = foreign_files(folder, matching_files([FileSystems.join(folder, "**")]))
    if foreign:
        raise UsageError(
            f"--vector_search_output {folder}: holds {len(foreign)} file(s) this pipeline "
            f"did not write, such as {foreign[0]}; Vector Search reads every file there, so "
            "give an empty folder or one earlier runs wrote"
        )


def check_bigquery_dataset(table: TableName) -> None:
    try:
        check_dataset(table)
    except ValueError as error:
        raise UsageError(str(error)) from error


# What an object store's refusal means for an output prefix.
_HTTP_REASONS = {
    401: "not authenticated",
    403: "permission denied: the account may not create objects there",
    404: "the bucket does not exist",
}


def _reason(error: BaseException) -> str:
    """The innermost cause in a few words (Beam wraps it in BeamIOError)."""
    while True:
        details = getattr(error, "exception_details", None)
        if details:
            error = next(iter(details.values()))
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            break
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None) or getattr(error, "code", None)
    if status in _HTTP_REASONS:
        return f"{_HTTP_REASONS[status]}, HTTP {status}"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""
