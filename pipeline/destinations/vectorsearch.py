"""--vector_search_output: this run's embeddings as Vertex AI Vector Search input files.

The batch-index input format: a folder whose top level holds only the data files
(`.json` here; a `delete/` folder is the one subfolder allowed), one JSON object per
line with `id`, `embedding`, optional `restricts` and `crowding_tag`
(https://cloud.google.com/vertex-ai/docs/vector-search/setup/format-structure).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import apache_beam as beam
import numpy as np

from pipeline.common import ImageKey
from pipeline.outputs import (
    DROP_REASON,
    FORMATS,
    KEEP,
    RUN_ID_PATTERN,
    STAGED_VECTORS,
    VECTORS,
    FileKind,
    OptionalOutput,
    RowColumns,
    RunTarget,
    WriteRunShards,
    datapoint_id,
    output_path,
)

# Besides this pipeline's own files, what may sit in the folder: the delete/ list that
# Vector Search reads, and the temporary folder of a write that was interrupted.
_OWN_FILE = re.compile(rf"{VECTORS}-{RUN_ID_PATTERN}-\d{{5}}-of-\d{{5}}\.json")
_ALLOWED_PREFIXES = ("delete/", f"beam-temp-{VECTORS}-")
# The restrict that holds an image's best label (--zero_shot_labels), beside the kept columns'.
LABEL_NAMESPACE = "label"
# "There is a limit of 5000 objects (files) in the batch root directory."
MAX_FILES = 5000


@dataclass(frozen=True)
class VectorSearchSettings:
    """The Vector Search files a run writes: the folder (--vector_search_output), the
    kept columns as restricts, the crowding column, the shard count, and the score
    heads' names (numeric restricts)."""

    folder: str
    keep_columns: tuple[str, ...] = ()
    crowding_column: str = ""
    num_shards: int = 0
    scores: tuple[str, ...] = ()
    labelled: bool = False  # --zero_shot_labels: the stored rows hold labels


def datapoint_line(
    keyed: tuple[ImageKey, np.ndarray],
    keep_columns: tuple[str, ...],
    crowding_column: str,
    scores: tuple[str, ...] = (),
    drop_reason: str | None = None,
) -> str:
    """One datapoint: id, embedding, a restrict for its best label (namespace `label`,
    with --zero_shot_labels) and per kept column, where the run decided what to keep
    (drop_reason not None) `keep` (`true` or `false`) and a row's `drop_reason` ("" when
    kept), a numeric restrict per score (its head's name, value_float), the crowding
    tag."""
    key, embedding = keyed
    # 9 significant digits give back every float32 exactly, at half the length of a
    # float64's shortest form.
    values = ",".join(map("{:.9g}".format, embedding.reshape(-1).tolist()))
    fields = [
        f'"id":{json.dumps(datapoint_id(key.uri), ensure_ascii=False)}',
        f'"embedding":[{values}]',
    ]
    restricts = [{"namespace": LABEL_NAMESPACE, "allow": [key.labels.label]}] if key.labels else []
    restricts += [
        {"namespace": name, "allow": [value]}
        for name, value in zip(keep_columns, key.columns, strict=True)
    ]
    if drop_reason is not None:
        restricts.append({"namespace": KEEP, "allow": ["false" if drop_reason else "true"]})
        if drop_reason:
            restricts.append({"namespace": DROP_REASON, "allow": [drop_reason]})
    if restricts:
        fields.append(f'"restricts":{json.dumps(restricts, ensure_ascii=False)}')
    if scores:
        numeric = [
            {"namespace": name, "value_float": float(f"{value:.9g}")}
            for name, value in zip(scores, key.scores, strict=True)
        ]
        fields.append(f'"numeric_restricts":{json.dumps(numeric)}')
    if crowding_column:
        tag = key.columns[keep_columns.index(crowding_column)]
        fields.append(f'"crowding_tag":{json.dumps(tag, ensure_ascii=False)}')
    return "{" + ",".join(fields) + "}"


def foreign_files(folder: str, paths: list[str]) -> list[str]:
    """Paths under folder that Vector Search would read but this pipeline did not write."""
    prefix = folder.rstrip("/") + "/"
    foreign = []
    for path in paths:
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        if not (_OWN_FILE.fullmatch(relative) or relative.startswith(_ALLOWED_PREFIXES)):
            foreign.append(path)
    return foreign


class WriteVectorSearch(OptionalOutput):
    """The stored (ImageKey, embedding)s to FOLDER/vectors-RUN-SSSSS-of-NNNNN.json (FOLDER:
    the run's staged copy of the Vector Search folder); where the run decided what to
    keep, this run's decided record files instead (`decided`, KeepDecisions), with their
    decisions. Gives the names written as `files` and a `description`."""

    name = "vector_search"
    step = "Vector Search files"
    file_kinds = (FileKind(VECTORS, ".json", in_vectors=True),)
    reads = ("stored", "embedded", "decided")

    def __init__(self, target: RunTarget, settings: VectorSearchSettings):
        super().__init__()
        self._folder = output_path(target.stage, STAGED_VECTORS)
        self._final_folder = settings.folder
        self._run_id = target.run_id
        self._keep_columns = settings.keep_columns
        self._crowding_column = settings.crowding_column
        self._num_shards = settings.num_shards
        self._scores = settings.scores
        self._labelled = settings.labelled
        self._output = target.output
        self._format = target.output_format

    def final_files(self) -> dict[str, str]:
        return {self.name: vector_files(self._final_folder)}

    def expand(self, run: dict[str, beam.PCollection]):
        settings = (self._keep_columns, self._crowding_column, self._scores)
        if "decided" in run:
            # What to keep was decided after the store: the datapoints are read back from
            # the decided record files, rather than every embedding held until then.
            columns = RowColumns(self._keep_columns, self._labelled, self._scores, curated=True)
            rows = run["decided"] | "Read decided rows" >> FORMATS[self._format].read_rows(
                self._output, columns
            )
            lines = rows | "To datapoints" >> beam.Map(
                lambda row: datapoint_line((row.key, row.embedding), *settings, row.drop_reason)
            )
        else:
            lines = run["stored"] | "To datapoints" >> beam.Map(datapoint_line, *settings)
        written = lines | "Write JSON lines" >> WriteRunShards(
            self._folder,
            VECTORS,
            ".json",
            self._run_id,
            num_shards=self._num_shards,
        )
        # Before anything is published: a folder over the limit keeps the last usable set.
        listed = (
            written
            | "List files" >> beam.combiners.ToList()
            | "At most 5,000 files" >> beam.Map(_within_limit, self._final_folder)
        )
        return {
            "files": listed | "File names" >> beam.FlatMap(list),
            "description": listed
            | "Describe"
            >> beam.Map(describe, beam.pvalue.AsSingleton(run["embedded"]), self._final_folder),
        }


def _within_limit(files: list[str], folder: str) -> list[str]:
    if len(files) > MAX_FILES:
        raise ValueError(
            f"--vector_search_output {folder}: {len(files)} files, more than the {MAX_FILES} "
            "Vector Search reads from one folder; set --num_shards"
        )
    return files


def describe(files: list[str], datapoints: int, folder: str) -> dict:
    """What the summary records of the files WriteVectorSearch listed."""
    return {"folder": folder, "files": len(files), "datapoints": datapoints}


def vector_files(folder: str) -> str:
    return output_path(folder, f"{VECTORS}-*.json")
