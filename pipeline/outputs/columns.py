"""The columns an embedding's row carries besides its format's own: the zero-shot label
columns, one float per score head, the input's kept columns, and what to keep."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# With --zero_shot_labels, after datapoint_id in Parquet and the .npy index; kept columns
# may not reuse them.
LABEL_COLUMNS = ("label", "label_score", "labels_top", "labels_top_scores")
LABEL_TYPES = (pa.string(), pa.float32(), pa.list_(pa.string()), pa.list_(pa.float32()))
# With --duplicate_threshold or --compare_with, last: whether to keep the image, and why
# not (pipeline/similarity/keep.py). No other column may take these names.
KEEP, DROP_REASON = "keep", "drop_reason"
KEEP_COLUMNS = (KEEP, DROP_REASON)
KEEP_TYPES = (pa.bool_(), pa.string())


@dataclass(frozen=True)
class RowColumns:
    """A run's extra columns, in the order its rows hold them: the label columns (when
    labelled), the scores (--score_head names, float32), the kept columns (strings), and
    keep and drop_reason (when curated: decided once the near-duplicates and matches are
    found, empty until then)."""

    kept: tuple[str, ...] = ()
    labelled: bool = False
    scores: tuple[str, ...] = ()
    curated: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        return LABEL_COLUMNS if self.labelled else ()

    @property
    def decisions(self) -> tuple[str, ...]:
        return KEEP_COLUMNS if self.curated else ()

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.labels, *self.scores, *self.kept, *self.decisions)

    def arrow_fields(self) -> list[tuple[str, pa.DataType]]:
        labels = zip(self.labels, LABEL_TYPES, strict=False)
        return [
            *labels,
            *((name, pa.float32()) for name in self.scores),
            *((name, pa.string()) for name in self.kept),
            *zip(self.decisions, KEEP_TYPES, strict=False),
        ]


NO_EXTRA_COLUMNS = RowColumns()
