"""The figures of ``GET /v1/stats`` and ``flawscope log stats``, computed from the inspection log alone.

Per model: counts, the NOT OK rate (overall and per time bucket), a score histogram with the
threshold, how operator verdicts agree with the model (confirmed defects, false alarms, misses
reported later, confirmed OK), and a drift signal -- the scores of the latest parts judged OK
against the good calibration scores saved with the model (two-sample Kolmogorov-Smirnov test).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from flawscope.service.log import InspectionLog, ServedModel

HISTOGRAM_BINS = 30
RATE_BUCKETS = 24
DRIFT_WINDOW = 200
DRIFT_MIN_PARTS = 30
DRIFT_P_VALUE = 0.01


def log_stats(log: InspectionLog, model: str | None = None) -> dict[str, Any]:
    """Every model's figures (or one model's), and the totals over all of them."""
    rows = log.rows_for_stats(model)
    served = _served_now(log)
    names = sorted({row["model"] for row in rows} | ({model} if model else set(served)))
    return {
        "total": _counts(rows),
        "models": {
            name: model_stats([row for row in rows if row["model"] == name], served.get(name)) for name in names
        },
    }


def _served_now(log: InspectionLog) -> dict[str, ServedModel]:
    """Each model name's version served last (after an update or a rollback), else the one remembered last."""
    served: dict[str, ServedModel] = {}
    for entry in log.models():
        served[entry.name] = entry
    for name in served:
        version = log.served_version(name)
        now = log.model(version) if version is not None else None
        if now is not None:
            served[name] = now
    return served


def model_stats(rows: list[sqlite3.Row], served: ServedModel | None) -> dict[str, Any]:
    scored = [row for row in rows if row["error"] is None]
    scores = np.array([row["score"] for row in scored], dtype=np.float64)
    threshold = served.threshold if served is not None else (scored[-1]["threshold"] if scored else None)
    return {
        **_counts(rows),
        "threshold": threshold,
        "histogram": _histogram(scores, threshold),
        "not_ok_rate_over_time": _rate_over_time(scored),
        "verdicts": _agreement(scored),
        "drift": _drift(scored, served),
    }


def _counts(rows: list[sqlite3.Row]) -> dict[str, Any]:
    failed = sum(row["error"] is not None for row in rows)
    not_ok = sum(row["label"] == "NOT OK" for row in rows)
    scored = len(rows) - failed
    return {
        "inspections": len(rows),
        "failed": failed,
        "ok": scored - not_ok,
        "not_ok": not_ok,
        "not_ok_rate": not_ok / scored if scored else None,
    }


def _histogram(scores: np.ndarray, threshold: float | None) -> dict[str, Any]:
    if scores.size == 0:
        return {"edges": [], "counts": [], "threshold": threshold}
    low, high = float(scores.min()), float(scores.max())
    if threshold is not None:
        low, high = min(low, threshold), max(high, threshold)
    if high <= low:
        high = low + 1.0
    counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS, range=(low, high))
    return {"edges": edges.tolist(), "counts": counts.tolist(), "threshold": threshold}


def _rate_over_time(scored: list[sqlite3.Row]) -> list[dict[str, Any]]:
    """The NOT OK rate in up to :data:`RATE_BUCKETS` equal spans of time from the first to the last inspection."""
    if not scored:
        return []
    times = np.array([row["created"] for row in scored])
    not_ok = np.array([row["label"] == "NOT OK" for row in scored])
    start, end = float(times.min()), float(times.max())
    edges = np.linspace(start, end if end > start else start + 1.0, RATE_BUCKETS + 1)
    bucket = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, RATE_BUCKETS - 1)
    out = []
    for index in range(RATE_BUCKETS):
        chosen = bucket == index
        if chosen.any():
            out.append(
                {"start": float(edges[index]), "inspections": int(chosen.sum()), "rate": float(not_ok[chosen].mean())}
            )
    return out


def _agreement(scored: list[sqlite3.Row]) -> dict[str, int]:
    pairs = [(row["label"], row["verdict"]) for row in scored if row["verdict"] is not None]
    return {
        "reviewed": len(pairs),
        "confirmed_defects": pairs.count(("NOT OK", "defect")),
        "false_alarms": pairs.count(("NOT OK", "ok")),
        "misses": pairs.count(("OK", "defect")),
        "confirmed_ok": pairs.count(("OK", "ok")),
    }


def _drift(scored: list[sqlite3.Row], served: ServedModel | None) -> dict[str, Any]:
    """The latest scores of parts judged OK (by the version served now, and not overruled by an operator) against
    the good calibration scores at or below the threshold (the same cut the model applies to the parts): a KS test,
    and the share above the calibration's median (about one half without drift)."""
    judged_now = [row for row in scored if served is None or row["model_version"] == served.version]
    recent = [row["score"] for row in judged_now if row["label"] == "OK" and row["verdict"] != "defect"][-DRIFT_WINDOW:]
    below = [score for score in served.calibration_scores if score <= served.threshold] if served is not None else []
    if not below:
        return {
            "status": "unknown",
            "reason": "the model saved no calibration scores at or below its threshold",
            "n_recent": len(recent),
        }
    if len(recent) < DRIFT_MIN_PARTS:
        return {
            "status": "unknown",
            "reason": f"{len(recent)} parts judged OK by the version served now; the check needs {DRIFT_MIN_PARTS}",
            "n_recent": len(recent),
        }
    from scipy.stats import ks_2samp

    calibration = np.asarray(below, dtype=np.float64)
    test = ks_2samp(recent, calibration)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    return {
        "status": "drift" if p_value < DRIFT_P_VALUE else "stable",
        "n_recent": len(recent),
        "n_calibration": int(calibration.size),
        "ks_statistic": statistic,
        "p_value": p_value,
        "recent_median": float(np.median(recent)),
        "calibration_median": float(np.median(calibration)),
        "share_above_calibration_median": float(np.mean(np.asarray(recent) > np.median(calibration))),
    }
