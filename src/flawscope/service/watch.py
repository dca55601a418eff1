"""``flawscope watch``: inspect every image a camera writes into a folder, once, when it is complete.

The folder's top level is scanned whenever ``watchfiles`` reports a change (and at least every
``poll_seconds``). A file is complete when its size and modification time have not changed for
``settle_seconds``. Each file is identified by its name, size and modification time, and marked as
inspected in the same database transaction as its log row: a restarted watcher inspects what arrived
while it was down and nothing twice. With ``sort=True`` an inspected file moves to ``ok/``, ``not_ok/``
or ``failed/`` beside it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flawscope.service.station import InspectionFailed, Station

logger = logging.getLogger("flawscope")

SORT_FOLDERS = {"OK": "ok", "NOT OK": "not_ok", None: "failed"}
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart")


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


def _source(path: Path, stat: os.stat_result) -> str:
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def _candidates(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """The files at the top of ``folder`` that may be images, each with its stat (one system call), by name."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or entry.name.lower().endswith(_PARTIAL_SUFFIXES):
                continue
            try:
                if entry.is_file():
                    found.append((Path(entry.path), entry.stat()))
            except FileNotFoundError:  # gone between listing and looking
                continue
    return sorted(found, key=lambda item: item[0].name)


class FolderWatcher:
    """Inspect the files that land in ``folder`` with ``station`` (its only model, or ``model``)."""

    def __init__(
        self,
        station: Station,
        folder: str | Path,
        *,
        model: str | None = None,
        sort: bool = False,
        settle_seconds: float = 0.5,
        poll_seconds: float = 1.0,
    ) -> None:
        self.station = station
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is not a folder to watch.")
        self.model = station.choose(model).name
        self.sort = sort
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self.inspected = station.log.watched_sources()
        self._seen: dict[Path, _Seen] = {}

    def scan(self) -> int:
        """Inspect every file that is complete and not inspected yet; return how many were inspected."""
        now = time.monotonic()
        count = 0
        present = set()
        for path, stat in _candidates(self.folder):
            present.add(path)
            source = _source(path, stat)
            if source in self.inspected:
                if self.sort:  # inspected, but the watcher stopped before moving it
                    self._move(path, self.inspected[source])
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                self._seen[path] = _Seen(stat.st_size, stat.st_mtime_ns, now)
                continue
            if now - seen.since < self.settle_seconds:
                continue
            self._inspect(path, source)
            count += 1
        self._seen = {path: seen for path, seen in self._seen.items() if path in present}
        return count

    def _inspect(self, path: Path, source: str) -> None:
        data = path.read_bytes()
        try:
            row = self.station.inspect(data, model=self.model, filename=path.name, source=source)
            label: str | None = row.label
            logger.info("%s: %s (score %.4g)", path.name, label, row.score)
        except InspectionFailed as failure:
            label = None
            logger.warning("%s: not inspected: %s", path.name, failure.inspection.error)
        self.inspected[source] = label
        self._seen.pop(path, None)
        if self.sort:
            self._move(path, label)

    def _move(self, path: Path, label: str | None) -> None:
        """Move an inspected file into its label's folder, never over a file of the same name already there."""
        folder = self.folder / SORT_FOLDERS[label]
        folder.mkdir(exist_ok=True)
        target, counter = folder / path.name, 1
        while target.exists():
            counter += 1
            target = folder / f"{path.stem}_{counter}{path.suffix}"
        os.replace(path, target)

    def run(self, stop: threading.Event | None = None) -> None:
        """Scan on every change in the folder and every ``poll_seconds`` until ``stop`` is set."""
        from watchfiles import watch

        stop = stop or threading.Event()
        self.scan()
        timeout_ms = int(1000 * min(self.poll_seconds, self.settle_seconds))
        for _ in watch(self.folder, stop_event=stop, yield_on_timeout=True, rust_timeout=timeout_ms, recursive=False):
            self.scan()
