"""Progress on standard error (so piped standard output stays clean).

On a terminal or in Jupyter: a live rich bar. Otherwise (a log file, CI, ``nohup``) a live bar shows nothing
until the end, so a plain line is written instead every ``LOG_INTERVAL_S`` seconds and at the
end: ``distilling 120/1000 (12 %), 10:05 elapsed, about 1:13:40 left``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_INTERVAL_S = 30.0
Item = TypeVar("Item")


class _NullBar:
    def advance(self, steps: float = 1) -> None:
        """Do nothing: progress display is off."""


class _Bar:
    def __init__(self, progress: Progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1) -> None:
        self._progress.advance(self._task, steps)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class _LogBar:
    """Progress as plain lines, at most one per ``interval`` seconds, plus one at the end."""

    def __init__(self, description: str, total: int, stream: TextIO, interval: float = LOG_INTERVAL_S) -> None:
        self.description, self.total, self.stream, self.interval = description, total, stream, interval
        self.done = 0.0
        self.started = self.last_line = time.monotonic()

    def advance(self, steps: float = 1) -> None:
        self.done += steps
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.write(now)

    def write(self, now: float) -> None:
        self.last_line = now
        elapsed = now - self.started
        line = f"{self.description} {self.done:g}/{self.total}"
        if self.total > 0:
            line += f" ({100 * self.done / self.total:.0f} %)"
        line += f", {_clock(elapsed)} elapsed"
        if 0 < self.done < self.total:
            line += f", about {_clock(elapsed * (self.total - self.done) / self.done)} left"
        print(line, file=self.stream, flush=True)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar | _LogBar | _NullBar]:
    """A context manager yielding an object with ``advance(steps)``; nothing is drawn when disabled."""
    if not enabled:
        yield _NullBar()
        return
    console = Console(stderr=True)
    if not (console.is_terminal or console.is_jupyter):
        bar = _LogBar(description, total, sys.stderr)
        yield bar
        bar.write(time.monotonic())
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


def notice(message: str, enabled: bool = True) -> None:
    """Say ``message`` on standard error, beside the progress bars (nothing when they are disabled)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)


def tracked(items: Sequence[Item], description: str, enabled: bool = True) -> Iterator[Item]:
    """Yield ``items`` one by one, advancing a progress bar (as :func:`progress_bar`) after each."""
    with progress_bar(description, len(items), enabled) as bar:
        for item in items:
            yield item
            bar.advance()
