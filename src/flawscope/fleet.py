"""Batch scoring on a Ray cluster: an archive of images scored by many machines, resumable, each image once.

:func:`predict_on_ray` does what :func:`flawscope.folders.predict_to_folder` does -- a row of
``predictions.csv`` per image, an overlay and a mask per scored image -- through Ray Data: the image paths are
a dataset, scored in batches by a pool of actors that each load the model once (a fitted model or an export),
one CPU thread each. Without an address it starts Ray on this machine; with ``auto`` or ``ray://host:port`` it
joins a running cluster. The output folder must be one every node can write (shared storage).

Exactly once, and resumable: each batch's rows are written by the actor that scored them to
``OUT/parts/part-<hash of the batch's paths>.parquet``, atomically (a temporary file renamed into place), before
the batch counts as done. Ray restarts a killed actor and runs its batch again, which writes the same part
again -- the same rows under the same name. At the end every part is read back and merged into
``predictions.parquet`` and ``predictions.csv``, one row per input in input order: a path scored twice (a batch
that ran again after its part was written) is kept once. A run stopped midway leaves its parts; ``resume``
scores only the images no part holds a score for.

Ray is imported only when a run starts (the ``ray`` extra: ``pip install "flawscope[ray]"``).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flawscope._progress import progress_bar
from flawscope.data.datasets import ImageDataset, Sample
from flawscope.errors import ConfigError, DataError
from flawscope.folders import COLUMNS, FolderPrediction, image_paths, load_scorer, result_row
from flawscope.scoring import Scorer

PARTS = "parts"
# the columns of a part file and of predictions.parquet: COLUMNS, the score a float (null when unreadable)
FLOAT_COLUMNS = frozenset({"score"})


class BatchScorer:
    """A Ray Data actor: loads the model once, scores a batch of paths, writes the batch's part file."""

    def __init__(self, model_dir: str, out: str, opening: int | None, images: bool, threads: int) -> None:
        self.model = load_scorer(model_dir, threads=threads)
        self.out = Path(out)
        self.opening = opening
        self.images = images

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        paths = [str(path) for path in batch["path"]]  # as given: the rows name them so
        files = [str(file) for file in batch["file"]]  # absolute: a worker runs in a folder of its own
        dataset = ImageDataset([Sample(file, path) for file, path in zip(files, paths)], "batch")
        rows = [
            result_row(self.model, result, self.out if self.images else None, stem_of(result.sample.name), self.opening)
            for result in self.model.iter_predict(dataset, on_error="skip", progress=False)
        ]
        write_part(self.out / PARTS, paths, rows)
        return {"path": paths, "scored": [bool(row[1]) for row in rows]}


def stem_of(path: str) -> str:
    """The file-name stem of an image's overlay and mask: its own stem and a hash of its full path, the same on
    every worker and every run, never shared by two inputs."""
    return f"{Path(path).stem or 'image'}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


def write_part(folder: Path, paths: list[str], rows: list[list[str]]) -> Path:
    """Write ``rows`` as ``folder/part-<hash of paths>.parquet`` through a temporary file renamed into place."""
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:24]
    target = folder / f"part-{name}.parquet"
    staging = folder / f".part-{name}.{os.getpid()}.tmp"
    pq.write_table(_table(rows), staging)
    os.replace(staging, target)
    return target


def _table(rows: list[list[str]]) -> Any:
    import pyarrow as pa

    columns = {}
    for index, column in enumerate(COLUMNS):
        values = [row[index] for row in rows]
        if column in FLOAT_COLUMNS:
            columns[column] = pa.array([float(value) if value else None for value in values], type=pa.float64())
        else:
            columns[column] = pa.array(values, type=pa.string())
    return pa.table(columns)


def read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """Every row of the part files in ``folder`` by path (a path in several parts: a row with a score wins)."""
    import pyarrow.parquet as pq

    rows: dict[str, dict[str, Any]] = {}
    for part in sorted(folder.glob("part-*.parquet")) if folder.is_dir() else ():
        for row in pq.read_table(part).to_pylist():
            if row["path"] not in rows or row["score"] is not None:
                rows[row["path"]] = row
    return rows


def predict_on_ray(
    model_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int | None = None,
    batch_size: int = 16,
    opening: int | None = None,
    images: bool = True,
    resume: bool = False,
    progress: bool = True,
    model: Scorer | None = None,
) -> FolderPrediction:
    """Score images on Ray; write ``out/predictions.parquet``, ``out/predictions.csv`` (and overlays and masks).

    ``address``: None starts Ray on this machine (``workers`` CPUs, default all), ``"auto"`` or
    ``"ray://host:port"`` joins a running cluster. ``workers`` actors (default: one per CPU of the cluster) score
    ``batch_size`` images at a time with one thread each. With ``resume``, images some earlier run's part files
    hold a score for are not scored again; without it, earlier parts are removed first. ``model`` is the model in
    ``model_dir`` when the caller has loaded it already; otherwise it is loaded here, so that one that does not
    load fails once, not in every actor.
    """
    import ray

    paths = [str(path) for path in image_paths(inputs)]
    if not paths:
        raise DataError(f"No images found in {', '.join(map(str, inputs))}.")
    if batch_size < 1 or (workers is not None and workers < 1):
        raise ConfigError(f"batch_size and workers must be at least 1. Got {batch_size} and {workers}.")
    if model is None:
        load_scorer(model_dir)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = out / PARTS
    if not resume:
        for stale in parts.glob("*part-*") if parts.is_dir() else ():
            stale.unlink()
    done = {path for path, row in read_parts(parts).items() if row["score"] is not None}
    todo = [path for path in paths if path not in done]
    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        _start_ray(address, workers)
    try:
        if todo:
            _score(ray, str(Path(model_dir).resolve()), todo, out, workers, batch_size, opening, images, progress)
    finally:
        if started_here:
            ray.shutdown()
    return _merge(out, paths, n_resumed=len(done & set(paths)))


def _start_ray(address: str | None, workers: int | None) -> None:
    import ray

    if address is None:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, configure_logging=False)
    else:
        ray.init(address=address, configure_logging=False)


def _score(
    ray: Any,
    model_dir: str,
    todo: list[str],
    out: Path,
    workers: int | None,
    batch_size: int,
    opening: int | None,
    images: bool,
    progress: bool,
) -> None:
    """Run the actor pool over ``todo``, advancing a progress bar as batches come back."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    pool = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = [{"path": path, "file": str(Path(path).resolve())} for path in todo]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(todo) // batch_size))
    scored = dataset.map_batches(
        BatchScorer,
        fn_constructor_args=(model_dir, str(out), opening, images, 1),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=pool,
        num_cpus=1,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}},
    )
    with progress_bar("scoring on ray", len(todo), progress) as bar:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            bar.advance(len(batch["path"]))


def _merge(out: Path, paths: list[str], n_resumed: int) -> FolderPrediction:
    """``predictions.parquet`` and ``predictions.csv`` (as :func:`~flawscope.folders.predict_to_folder` writes it)
    from the part files: one row per input, in input order; an input no part holds (a run stopped midway) has
    no row."""
    import pyarrow.parquet as pq

    rows = read_parts(out / PARTS)
    ordered = [_csv_row(rows[path]) for path in paths if path in rows]
    pq.write_table(_table(ordered), out / ".predictions.parquet.tmp")
    os.replace(out / ".predictions.parquet.tmp", out / "predictions.parquet")
    with open(out / ".predictions.csv.tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(ordered)
    os.replace(out / ".predictions.csv.tmp", out / "predictions.csv")
    failed = {row[0]: row[COLUMNS.index("error")] for row in ordered if not row[1]}
    return FolderPrediction(out / "predictions.csv", len(ordered) - len(failed), failed, n_resumed=n_resumed)


def _csv_row(row: dict[str, Any]) -> list[str]:
    """A part file's row as the strings of a ``predictions.csv`` row."""
    return [
        f"{row[column]:.6f}" if column in FLOAT_COLUMNS and row[column] is not None else (row[column] or "")
        for column in COLUMNS
    ]


__all__ = ["BatchScorer", "predict_on_ray", "read_parts", "write_part"]
