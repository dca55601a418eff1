"""The inspection station: ``flawscope serve`` (HTTP API and review page), ``flawscope watch`` (a camera's
folder) and the inspection log they share.

Needs the ``serve`` extra (FastAPI, uvicorn, prometheus_client, watchfiles): ``pip install "flawscope[serve]"``.
:class:`~flawscope.service.station.Station` and :class:`~flawscope.service.log.InspectionLog` are plain
Python and usable without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flawscope.service.log import Inspection, InspectionLog
from flawscope.service.station import DEFAULT_MAX_PIXELS, Station, load_models
from flawscope.service.store import ContentStore

__all__ = [
    "ContentStore",
    "Inspection",
    "InspectionLog",
    "Station",
    "default_store",
    "default_versions",
    "open_station",
]


def default_store(db: str | Path) -> Path:
    """Where a log's pictures go unless told otherwise: ``<db name>-store/`` beside the database file."""
    db = Path(db)
    return db.with_name(f"{db.stem}-store")


def default_versions(db: str | Path) -> Path:
    """Where the model versions a station teaches are saved: ``<db name>-models/<model name>/<version>/`` beside
    the database file."""
    db = Path(db)
    return db.with_name(f"{db.stem}-models")


def open_station(
    model_dirs: Sequence[str | Path],
    db: str | Path,
    store: str | Path | None = None,
    *,
    store_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str | None = None,
    max_batch: int = 8,
    resume: bool = True,
) -> Station:
    """Load the models, open (or create and migrate) the log and the picture store: a station ready to inspect.
    Each model scores up to ``max_batch`` images that wait for it at once (:mod:`flawscope.service.batching`).
    With ``resume``, a model taught by an earlier run on this log is served as taught (see :class:`Station`)."""
    models = load_models(list(model_dirs), device, max_batch)
    pictures = ContentStore(store or default_store(db)) if store_images else None
    return Station(
        models,
        InspectionLog(db),
        pictures,
        max_pixels=max_pixels,
        versions=default_versions(db),
        device=device,
        resume=resume,
    )
