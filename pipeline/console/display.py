"""A local run's progress as it runs: a bar on a terminal, a line every few seconds
otherwise (a pipe, CI, a log file)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from pipeline.common import progress

BAR_REFRESH_SECONDS = 0.25
LINE_EVERY_SECONDS = 10.0

_COUNTED = "{n_fmt} of {total_fmt} images{postfix} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
_BAR = (
    "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} images{postfix} "
    "[{elapsed}<{remaining}, {rate_noinv_fmt}]"
)
_READING = "{n_fmt} rows read [{elapsed}]"


class ProgressDisplay:
    """Draws a run's Progress on a stream of its own (a copy of the standard error as it
    was, so that hidden_chatter's filter can pass other lines through write())."""

    def __init__(self, terminal: bool, every: float):
        self._stream: TextIO = os.fdopen(os.dup(2), "w", buffering=1)
        self._terminal = terminal
        self._every = every
        self._bar: tqdm | None = None
        self._started = time.monotonic()
        self._started_at = time.time()  # tqdm's clock
        self._last_line = self._started
        self._steps_shown = 0
        self._last_state: tuple[int, ...] = ()
        self._lock = threading.Lock()
        self.record: progress.Progress | None = None

    def steady_rate(self) -> float | None:
        """Images per second once the model was loaded (Progress.steady_rate)."""
        return self.record.snapshot().steady_rate() if self.record else None

    def write(self, line: bytes) -> None:
        """Another line for the terminal, printed above the bar."""
        with self._lock:
            self._print(line.decode("utf-8", "replace").rstrip("\n"))

    def _print(self, text: str) -> None:
        """A line above the bar, where there is one; under the lock."""
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream)

    def update(self, seen: progress.Progress, final: bool = False) -> None:
        with self._lock:
            self._show_steps(seen)
            if self._terminal:
                self._draw(seen)
            elif final or time.monotonic() - self._last_line >= self._every:
                self._last_line = time.monotonic()
                state = (seen.count(progress.ROWS), _done(seen), seen.failed, seen.to_embed)
                if seen.count(progress.ROWS) and state != self._last_state:
                    self._last_state = state
                    print(self._line(seen), file=self._stream)

    def close(self, seen: progress.Progress) -> None:
        self.update(seen, final=True)
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._stream.close()

    def _draw(self, seen: progress.Progress) -> None:
        if self._bar is None:
            if not seen.count(progress.ROWS):
                return
            self._bar = tqdm(
                file=self._stream, unit=" images", dynamic_ncols=True, mininterval=0, leave=True
            )
            self._bar.start_t = self._started_at
        bar = self._bar
        embedding = _embedding(seen)
        if embedding and bar.total is None:
            bar.reset(total=seen.to_embed)  # the rows are all read: count images from 0
            bar.start_t = self._started_at
            bar.bar_format = _BAR
        if embedding:
            bar.total = seen.to_embed
        else:
            bar.bar_format = _READING
        bar.set_postfix_str(_failed(seen), refresh=False)
        bar.update(_done(seen) - bar.n)
        bar.refresh()

    def _line(self, seen: progress.Progress) -> str:
        elapsed = time.monotonic() - self._started
        if not _embedding(seen):
            return tqdm.format_meter(seen.count(progress.ROWS), None, elapsed, bar_format=_READING)
        failed = _failed(seen)
        return tqdm.format_meter(
            _done(seen),
            seen.to_embed,
            elapsed,
            unit=" images",
            bar_format=_COUNTED,
            postfix=f", {failed}" if failed else "",
        )

    def _show_steps(self, seen: progress.Progress) -> None:
        for step in seen.steps[self._steps_shown :]:
            self._print(f"{step}...")
        self._steps_shown = len(seen.steps)


def _failed(seen: progress.Progress) -> str:
    return f"{seen.failed} failed" if seen.failed else ""


def _embedding(seen: progress.Progress) -> bool:
    """Whether the images are loading: the rows are all read (FnApiRunner runs a step over
    all of its input before the steps after it)."""
    after_reading = seen.failed - seen.count("failed_read")
    return bool(seen.count(progress.LOADED) or seen.count(progress.EMBEDDED) or after_reading)


def _done(seen: progress.Progress) -> int:
    """Rows this run has finished with: embedded, or failed at any step."""
    return seen.count(progress.EMBEDDED) + seen.failed


@contextmanager
def shown_progress(terminal: bool, every: float = LINE_EVERY_SECONDS) -> Iterator[ProgressDisplay]:
    """While the block runs, this process's counts (pipeline.common.progress) are shown
    on the standard error: a bar on a terminal, else a line every `every` seconds."""
    display = ProgressDisplay(terminal, every)
    stop = threading.Event()
    with progress.watched() as record:
        display.record = record
        watcher = threading.Thread(target=_watch, args=(record, display, stop), daemon=True)
        watcher.start()
        try:
            yield display
        finally:
            stop.set()
            watcher.join()
            display.close(record.snapshot())


def _watch(record: progress.Progress, display: ProgressDisplay, stop: threading.Event) -> None:
    while not stop.wait(BAR_REFRESH_SECONDS):
        display.update(record.snapshot())
