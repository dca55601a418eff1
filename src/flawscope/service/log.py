"""The inspection log: one SQLite file (WAL mode) holding every inspection, every operator verdict and the
models that made them.

The schema is versioned with ``PRAGMA user_version`` and :data:`MIGRATIONS`: opening a log applies the
missing steps in order, each in its own transaction; a log written by a newer flawscope is refused.
Every write commits before it returns, so an answer a client received is on disk even if the process
is killed right after.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flawscope.errors import DataError, ModelFileError

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        version TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        method TEXT NOT NULL,
        threshold REAL NOT NULL,
        calibration_scores TEXT NOT NULL,
        first_served REAL NOT NULL
    );
    CREATE TABLE inspections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created REAL NOT NULL,
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        part_id TEXT,
        station TEXT,
        filename TEXT,
        image_sha256 TEXT NOT NULL,
        image_bytes INTEGER NOT NULL,
        width INTEGER,
        height INTEGER,
        score REAL,
        threshold REAL,
        label TEXT CHECK (label IN ('OK', 'NOT OK')),
        boxes TEXT,
        latency_ms REAL NOT NULL,
        error TEXT,
        image_key TEXT,
        overlay_key TEXT,
        mask_key TEXT
    );
    CREATE INDEX inspections_created ON inspections (created);
    CREATE INDEX inspections_model ON inspections (model, id);
    CREATE TABLE verdicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        inspection_id INTEGER NOT NULL REFERENCES inspections (id),
        created REAL NOT NULL,
        verdict TEXT NOT NULL CHECK (verdict IN ('ok', 'defect')),
        note TEXT,
        operator TEXT
    );
    CREATE INDEX verdicts_inspection ON verdicts (inspection_id, id);
    """,
    """
    CREATE TABLE watched_files (
        source TEXT PRIMARY KEY,
        inspection_id INTEGER NOT NULL REFERENCES inspections (id)
    );
    """,
    """
    ALTER TABLE models ADD COLUMN parent TEXT;
    ALTER TABLE models ADD COLUMN directory TEXT;
    CREATE TABLE teach_queue (
        inspection_id INTEGER PRIMARY KEY REFERENCES inspections (id),
        model TEXT NOT NULL,
        queued REAL NOT NULL,
        operator TEXT,
        taught_version TEXT
    );
    CREATE INDEX teach_queue_model ON teach_queue (model, taught_version);
    CREATE TABLE model_swaps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        version TEXT NOT NULL REFERENCES models (version),
        created REAL NOT NULL,
        reason TEXT NOT NULL CHECK (reason IN ('start', 'update', 'recalibrate', 'rollback'))
    );
    """,
)

VERDICTS = ("ok", "defect")
LABELS = ("OK", "NOT OK")

# The latest verdict of each inspection is the one that counts.
_LATEST_VERDICT = """
    LEFT JOIN verdicts AS v ON v.id = (
        SELECT MAX(id) FROM verdicts WHERE inspection_id = i.id
    )
"""


@dataclass
class Inspection:
    """One row of the log: what came in, what the model said, and where the pictures are stored."""

    model: str
    model_version: str
    image_sha256: str
    image_bytes: int
    latency_ms: float
    created: float = field(default_factory=time.time)
    part_id: str | None = None
    station: str | None = None
    filename: str | None = None
    width: int | None = None
    height: int | None = None
    score: float | None = None
    threshold: float | None = None
    label: str | None = None
    boxes: list[list[float]] | None = None
    error: str | None = None
    image_key: str | None = None
    overlay_key: str | None = None
    mask_key: str | None = None
    id: int | None = None
    verdict: str | None = None
    verdict_note: str | None = None
    verdict_operator: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServedModel:
    """A model as the log remembers it: enough to judge drift and agreement without loading it, and the version
    it was updated from (None for a model as fitted) with the directory it is saved in."""

    name: str
    version: str
    method: str
    threshold: float
    calibration_scores: list[float]
    parent: str | None = None
    directory: str | None = None


_INSPECTION_COLUMNS = [
    name
    for name in Inspection.__dataclass_fields__
    if name not in ("id", "verdict", "verdict_note", "verdict_operator")
]


class InspectionLog:
    """The SQLite inspection log, safe to share between the threads of a server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._connection.row_factory = sqlite3.Row
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = FULL")
            self._connection.execute("PRAGMA foreign_keys = ON")
            self._connection.execute("PRAGMA busy_timeout = 5000")
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise ModelFileError(f"Inspection log {self.path} cannot be opened as SQLite: {error}.") from error

    @property
    def schema_version(self) -> int:
        return int(self._connection.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        found = self.schema_version
        if found > len(MIGRATIONS):
            raise ModelFileError(
                f"Inspection log {self.path} has schema version {found}; this flawscope knows up to "
                f"{len(MIGRATIONS)}. Upgrade flawscope or use another --db file."
            )
        for version in range(found, len(MIGRATIONS)):
            with self._transaction() as connection:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    # ------------------------------------------------------------------ writes
    def record(self, inspection: Inspection, source: str | None = None) -> int:
        """Append one inspection and return its id (committed on return). ``source`` names the file a folder
        watcher took it from; it is marked as inspected in the same transaction, so a restart neither repeats
        nor skips it."""
        values = [getattr(inspection, name) for name in _INSPECTION_COLUMNS]
        values[_INSPECTION_COLUMNS.index("boxes")] = None if inspection.boxes is None else json.dumps(inspection.boxes)
        placeholders = ", ".join("?" for _ in _INSPECTION_COLUMNS)
        with self._transaction() as connection:
            cursor = connection.execute(
                f"INSERT INTO inspections ({', '.join(_INSPECTION_COLUMNS)}) VALUES ({placeholders})", values
            )
            if source is not None:
                connection.execute(
                    "INSERT INTO watched_files (source, inspection_id) VALUES (?, ?)", (source, cursor.lastrowid)
                )
        inspection.id = int(cursor.lastrowid or 0)
        return inspection.id

    def add_verdict(
        self, inspection_id: int, verdict: str, note: str | None = None, operator: str | None = None
    ) -> None:
        """Store an operator's verdict on an inspection; the latest one counts."""
        if verdict not in VERDICTS:
            raise DataError(f"A verdict is 'ok' or 'defect'. Got {verdict!r} instead.")
        with self._transaction() as connection:
            if connection.execute("SELECT 1 FROM inspections WHERE id = ?", (inspection_id,)).fetchone() is None:
                raise KeyError(inspection_id)
            connection.execute(
                "INSERT INTO verdicts (inspection_id, created, verdict, note, operator) VALUES (?, ?, ?, ?, ?)",
                (inspection_id, time.time(), verdict, note, operator),
            )

    def queue_for_teaching(self, inspection_id: int, model: str, operator: str | None = None) -> None:
        """Queue an inspection's image to be taught to ``model`` as good at its next update (once: queuing it
        again changes nothing)."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO teach_queue (inspection_id, model, queued, operator) VALUES (?, ?, ?, ?)",
                (inspection_id, model, time.time(), operator),
            )

    def pending_teaching(self, model: str) -> list[tuple[int, str | None]]:
        """``(inspection id, stored image key)`` of every image queued for ``model`` and not taught yet, oldest
        first."""
        rows = self._read(
            "SELECT q.inspection_id, i.image_key FROM teach_queue AS q JOIN inspections AS i ON i.id = q.inspection_id "
            "WHERE q.model = ? AND q.taught_version IS NULL ORDER BY q.queued, q.inspection_id",
            (model,),
        )
        return [(int(row[0]), row[1]) for row in rows]

    def record_swap(self, model: ServedModel, reason: str, taught: Sequence[int] = ()) -> None:
        """Remember that ``model`` is served from now on (``reason``: 'start', 'update', 'recalibrate' or
        'rollback'); for an update, that it learned the queued inspections ``taught`` -- in one transaction."""
        with self._transaction() as connection:
            _insert_model(connection, model)
            connection.executemany(
                "UPDATE teach_queue SET taught_version = ? WHERE inspection_id = ?",
                [(model.version, inspection_id) for inspection_id in taught],
            )
            _insert_swap(connection, model, reason)

    def verdict_images(self, model: str) -> list[tuple[str, str]]:
        """``(stored image key, latest verdict)`` of every inspection by ``model`` an operator judged, except those
        a version of it was taught (they score as training images do): what a recalibration from verdicts uses."""
        rows = self._read(
            f"SELECT i.image_key, v.verdict FROM inspections AS i {_LATEST_VERDICT} "
            "LEFT JOIN teach_queue AS q ON q.inspection_id = i.id "
            "WHERE i.model = ? AND i.error IS NULL AND i.image_key IS NOT NULL AND v.verdict IS NOT NULL "
            "AND q.taught_version IS NULL ORDER BY i.id",
            (model,),
        )
        return [(row[0], row[1]) for row in rows]

    def served_version(self, name: str) -> str | None:
        """The version of model ``name`` served last (None when never served)."""
        rows = self._read("SELECT version FROM model_swaps WHERE name = ? ORDER BY id DESC LIMIT 1", (name,))
        return rows[0][0] if rows else None

    def model(self, version: str) -> ServedModel | None:
        rows = self._read("SELECT * FROM models WHERE version = ?", (version,))
        return _served_model(rows[0]) if rows else None

    def is_writable(self) -> bool:
        """True when a write transaction can be taken now (what ``/health`` checks)."""
        try:
            with self._transaction():
                pass
        except sqlite3.Error:
            return False
        return True

    # ------------------------------------------------------------------ reads
    def get(self, inspection_id: int) -> Inspection | None:
        rows = self._read(f"{_SELECT} WHERE i.id = ?", (inspection_id,))
        return _inspection(rows[0]) if rows else None

    def query(
        self,
        *,
        label: str | None = None,
        verdict: str | None = None,
        model: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Inspection]:
        """Inspections newest first. ``verdict`` is 'ok', 'defect' or 'none' (not reviewed yet); ``label`` 'OK',
        'NOT OK' or 'failed' (unreadable input); ``before_id`` pages by id, ``offset`` by position."""
        conditions, parameters = _filters(label, verdict, model, since, before_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._read(f"{_SELECT} {where} ORDER BY i.id DESC LIMIT ? OFFSET ?", (*parameters, limit, offset))
        return [_inspection(row) for row in rows]

    def watched_sources(self) -> dict[str, str | None]:
        """Every file source a folder watcher has inspected, with the label it got (None: it failed)."""
        rows = self._read(
            "SELECT w.source, i.label FROM watched_files AS w JOIN inspections AS i ON i.id = w.inspection_id"
        )
        return {row[0]: row[1] for row in rows}

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM inspections")[0][0])

    def models(self) -> list[ServedModel]:
        return [_served_model(row) for row in self._read("SELECT * FROM models ORDER BY first_served")]

    def rows_for_stats(self, model: str | None = None) -> list[sqlite3.Row]:
        """``(created, model, model_version, score, threshold, label, error, verdict)`` of every inspection."""
        where, parameters = ("WHERE i.model = ?", (model,)) if model else ("", ())
        return self._read(
            "SELECT i.created, i.model, i.model_version, i.score, i.threshold, i.label, i.error, v.verdict "
            f"FROM inspections AS i {_LATEST_VERDICT} {where} ORDER BY i.id",
            parameters,
        )

    # ------------------------------------------------------------------ export
    def export(self, out: str | Path) -> Path:
        """Write every inspection with its latest verdict to ``out`` (.csv, or .parquet where pyarrow is installed)."""
        out = Path(out)
        rows = [inspection.to_json() for inspection in self._all()]
        columns = list(Inspection.__dataclass_fields__)
        for row in rows:
            row["boxes"] = None if row["boxes"] is None else json.dumps(row["boxes"])
        if out.suffix == ".parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError as error:
                raise DataError("Parquet export needs pyarrow: pip install pyarrow (or export to .csv).") from error
            pq.write_table(pa.table({column: [row[column] for row in rows] for column in columns}), out)
            return out
        if out.suffix != ".csv":
            raise DataError(f"Export writes .csv or .parquet files. Got {out.name!r} instead.")
        with open(out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return out

    def _all(self) -> Iterator[Inspection]:
        last_id = 0
        while True:
            rows = self._read(f"{_SELECT} WHERE i.id > ? ORDER BY i.id LIMIT 1000", (last_id,))
            if not rows:
                return
            yield from (_inspection(row) for row in rows)
            last_id = rows[-1]["id"]


_SELECT = (
    "SELECT i.*, v.verdict AS verdict, v.note AS verdict_note, v.operator AS verdict_operator "
    f"FROM inspections AS i {_LATEST_VERDICT}"
)


def _filters(
    label: str | None, verdict: str | None, model: str | None, since: float | None, before_id: int | None
) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    parameters: list[Any] = []
    if label == "failed":
        conditions.append("i.error IS NOT NULL")
    elif label is not None:
        if label not in LABELS:
            raise DataError(f"label is 'OK', 'NOT OK' or 'failed'. Got {label!r} instead.")
        conditions.append("i.label = ?")
        parameters.append(label)
    if verdict == "none":
        conditions.append("v.verdict IS NULL")
    elif verdict is not None:
        if verdict not in VERDICTS:
            raise DataError(f"verdict is 'ok', 'defect' or 'none'. Got {verdict!r} instead.")
        conditions.append("v.verdict = ?")
        parameters.append(verdict)
    for column, value in (("i.model = ?", model), ("i.created >= ?", since), ("i.id < ?", before_id)):
        if value is not None:
            conditions.append(column)
            parameters.append(value)
    return conditions, parameters


def _served_model(row: sqlite3.Row) -> ServedModel:
    return ServedModel(
        row["name"],
        row["version"],
        row["method"],
        row["threshold"],
        json.loads(row["calibration_scores"]),
        row["parent"],
        row["directory"],
    )


def _insert_model(connection: sqlite3.Connection, model: ServedModel) -> None:
    """Record a served model once per version (its calibration scores judge drift later)."""
    connection.execute(
        "INSERT OR IGNORE INTO models "
        "(version, name, method, threshold, calibration_scores, first_served, parent, directory) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            model.version,
            model.name,
            model.method,
            model.threshold,
            json.dumps(model.calibration_scores),
            time.time(),
            model.parent,
            model.directory,
        ),
    )


def _insert_swap(connection: sqlite3.Connection, model: ServedModel, reason: str) -> None:
    connection.execute(
        "INSERT INTO model_swaps (name, version, created, reason) VALUES (?, ?, ?, ?)",
        (model.name, model.version, time.time(), reason),
    )


def _inspection(row: sqlite3.Row) -> Inspection:
    values = dict(row)
    values["boxes"] = None if values["boxes"] is None else json.loads(values["boxes"])
    return Inspection(**values)
