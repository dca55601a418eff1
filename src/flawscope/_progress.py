"""Progress bars on standard error (so piped standard output stays clean)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _NullBar:
    def advance(self, steps: float = 1) -> None:
        """Do nothing: progress display is off."""


class _Bar:
    def __init__(self, progress: Progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: float = 1) -> None:
        self._progress.advance(self._task, steps)


@contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator["_Bar | _NullBar"]:
    """A context manager yielding an object with ``advance(steps)``; nothing is drawn when disabled."""
    if not enabled:
        yield _NullBar()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))
