"""What a local run's steps have done so far, for the console to show while it runs.

The steps count through pipeline.common.counter, which adds each count here as well as
to Beam's metrics. A local run's steps run in the process that launched them (Beam's
FnApiRunner), where the command line watches this record; on Dataflow's workers nobody
watches, and only the metrics count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Progress:
    """Counts by counter name, the steps begun after the embedding, when the first image
    was loaded (the model is loaded by then) and when the last was embedded."""

    counts: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    first_loaded_at: float | None = None
    last_embedded_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + amount
            if name == LOADED and self.first_loaded_at is None:
                self.first_loaded_at = time.monotonic()
            elif name == EMBEDDED:
                self.last_embedded_at = time.monotonic()

    def begin(self, step: str) -> None:
        with self._lock:
            if step not in self.steps:
                self.steps.append(step)

    def snapshot(self) -> Progress:
        """A copy to read without the lock."""
        with self._lock:
            return Progress(
                dict(self.counts), list(self.steps), self.first_loaded_at, self.last_embedded_at
            )

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    @property
    def failed(self) -> int:
        return sum(n for name, n in self.counts.items() if name.startswith("failed_"))

    @property
    def to_embed(self) -> int:
        """Rows read so far that this run embeds: a CSV's rows, less repeats and the
        images already embedded; final once the images are loading."""
        return self.count(ROWS) - self.count(DUPLICATES) - self.count(SKIPPED)

    def steady_rate(self) -> float | None:
        """Images embedded per second from the first image loaded to the last embedded:
        the rate once the model was loaded (the steps that load an image set it up
        first); None before an image is embedded."""
        if self.first_loaded_at is None or self.last_embedded_at is None:
            return None
        seconds = self.last_embedded_at - self.first_loaded_at
        return self.count(EMBEDDED) / seconds if seconds > 0 else None


# The counters the console reads (the steps' metric names).
ROWS, DUPLICATES, SKIPPED = "rows_read", "duplicates_dropped", "skipped_existing"
LOADED, EMBEDDED = "images_loaded", "images_embedded"

_watched: Progress | None = None


@contextmanager
def watched() -> Iterator[Progress]:
    """Counts in this process go to the Progress yielded, until the block ends."""
    global _watched
    _watched = Progress()
    try:
        yield _watched
    finally:
        _watched = None


def add(name: str, amount: int) -> None:
    """Counts amount under name, where a console watches this process."""
    if _watched is not None:
        _watched.add(name, amount)


def begin(step: str) -> None:
    """Says that a step after the embedding has begun (the map, the neighbours, ...)."""
    if _watched is not None:
        _watched.begin(step)
