"""Pictures for people: heat-map overlays and the self-contained HTML evaluation report."""

from __future__ import annotations

import base64
import functools
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flawscope.data.io import as_float

if TYPE_CHECKING:
    from flawscope.evaluation import Report
    from flawscope.scoring import Scorer


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmax: float, vmin: float = 0.0, alpha: float = 0.45
) -> np.ndarray:
    """Blend a ``jet`` colouring of ``anomaly_map`` (clipped to [vmin, vmax]) over ``image`` (pixels as read: float
    in [0, 1] or uint8); uint8 ``H x W x 3``.

    Drawn ``_OVERLAY_ROWS`` rows at a time, so that a large (tiled) image needs a few bands of float temporaries
    beside its overlay rather than several copies of itself."""
    overlay = np.empty((*anomaly_map.shape, 3), dtype=np.uint8)
    for top in range(0, anomaly_map.shape[0], _OVERLAY_ROWS):
        rows = slice(top, top + _OVERLAY_ROWS)
        scaled = np.clip((anomaly_map[rows] - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
        heat = _jet_table()[np.minimum((scaled * _JET_LEVELS).astype(np.intp), _JET_LEVELS - 1)]
        band = as_float(image[rows])
        base = np.repeat(band, 3, axis=2) if image.shape[2] == 1 else band
        overlay[rows] = np.round(255 * ((1 - alpha) * base + alpha * heat))
    return overlay


_JET_LEVELS = 256
_OVERLAY_ROWS = 256


# matplotlib's ``jet`` (its ``_jet_data``): per channel, the colour at each point of [0, 1], linear in between
_JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


@functools.cache
def _jet_table() -> np.ndarray:
    """``jet`` as the 256-entry lookup table matplotlib samples it into, float32 RGB -- without matplotlib, so
    the torch-free runtime draws the same overlays."""
    levels = np.linspace(0.0, 1.0, _JET_LEVELS)
    channels = []
    for name in ("red", "green", "blue"):
        points = np.array(_JET_SEGMENTS[name])
        channels.append(np.interp(levels, points[:, 0], points[:, 1]))
    return np.stack(channels, axis=1).astype(np.float32)


def overlay_scale(detector: Scorer, anomaly_map: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` of an overlay's colour scale: for a calibrated detector the pixel threshold sits in the
    middle (green-yellow) and red is 1.5x above it; otherwise the map's own range."""
    if detector.pixel_threshold_ is not None:
        return 0.5 * detector.pixel_threshold_, 1.5 * detector.pixel_threshold_
    return float(anomaly_map.min()), float(anomaly_map.max())


def _subplots(rows: int = 1, columns: int = 1, figsize: tuple[float, float] = (4.2, 4)) -> tuple[Any, Any]:
    """A figure and its axes drawn by the Agg canvas directly: pyplot, and with it the user's matplotlib backend,
    is never touched."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(rows, columns)


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _curve_figures(report: Report) -> list[tuple[str, str]]:
    figures = []
    metrics, curves = report.metrics, report.curves
    figure, axis = _subplots(figsize=(4.2, 4))
    axis.plot(*curves["image_roc"], label=f"image, AUROC {metrics['image_auroc']:.3f}")
    if "pixel_roc" in curves:
        axis.plot(*curves["pixel_roc"], label=f"pixel, AUROC {metrics['pixel_auroc']:.3f}")
    axis.plot([0, 1], [0, 1], ":", color="grey")
    axis.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    axis.legend(loc="lower right")
    figures.append(("ROC curves", _figure_png(figure)))
    if "pro" in curves:
        figure, axis = _subplots(figsize=(4.2, 4))
        fpr, pro = np.array(curves["pro"][0]), np.array(curves["pro"][1])
        limit = metrics["aupro_max_fpr"]
        axis.plot(fpr, pro)
        axis.axvline(limit, ls=":", color="grey")
        axis.set(
            xlabel="false-positive rate",
            ylabel="per-region overlap",
            title=f"PRO, AUPRO@{limit:g} = {metrics['aupro']:.3f}",
            xlim=(0, min(1, 3 * limit)),
        )
        figures.append(("Per-region overlap", _figure_png(figure)))
    if "region_overlap" in metrics:
        figures.append(("Region overlap quantiles", _region_overlap_figure(metrics["region_overlap"])))
    figures.append(("Confusion matrix", _confusion_figure(metrics["confusion_matrix"])))
    figure, axis = _subplots(figsize=(5, 4))
    scores = np.array([row["score"] for row in report.rows])
    labels = np.array([row["label"] for row in report.rows])
    bins = np.linspace(scores.min(), scores.max(), 40)
    axis.hist(scores[labels == 0], bins=bins, alpha=0.6, label="good")
    axis.hist(scores[labels == 1], bins=bins, alpha=0.6, label="defective")
    axis.axvline(metrics["threshold"], color="black", ls="--", label="threshold")
    axis.set(xlabel="anomaly score", ylabel="images", title="Score histograms")
    axis.legend()
    figures.append(("Score histograms", _figure_png(figure)))
    return figures


def _confusion_figure(matrix: list[list[int]]) -> str:
    """The confusion matrix ([[TN, FP], [FN, TP]]) as a picture, each cell with its count and its
    share of the true class."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = _subplots(figsize=(3.6, 3.2))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row in range(2):
        for col in range(2):
            axis.text(
                col,
                row,
                f"{int(counts[row, col])}\n{shares[row, col]:.0%}",
                ha="center",
                va="center",
                color="white" if shares[row, col] > 0.5 else "black",
            )
    axis.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["good", "defective"],
        yticklabels=["good", "defective"],
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix",
    )
    return _figure_png(figure)


def _region_overlap_figure(overlap: dict) -> str:
    """Quantiles of the per-region overlap against the false-positive rate (Bergmann et al. 2019, Fig. 7)."""
    figure, axis = _subplots(figsize=(4.2, 4))
    for quantile, values in zip(overlap["quantiles"], overlap["overlap"]):
        axis.plot(overlap["fpr"], values, marker="o", label=f"{quantile:.0%} quantile")
    axis.set(
        xlabel="false-positive rate",
        ylabel="overlap with the ground-truth region",
        title=f"Per-region overlap ({overlap['n_regions']} regions)",
        ylim=(0, 1.02),
    )
    axis.legend(loc="lower right")
    return _figure_png(figure)


def _case_figures(report: Report) -> list[tuple[str, str]]:
    figures = []
    vmax = max((float(case.anomaly_map.max()) for case in report.cases), default=1.0)
    for case in report.cases:
        figure, axes = _subplots(1, 2, figsize=(6, 3))
        pixels = as_float(case.image)
        shown = pixels[..., 0] if pixels.shape[2] == 1 else pixels
        axes[0].imshow(shown, cmap="gray", vmin=0, vmax=1)
        axes[1].imshow(heatmap_overlay(case.image, case.anomaly_map, vmax))
        for axis in axes:
            axis.axis("off")
        row = case.row
        kind = "good, scored high" if row["label"] == 0 else f"defective ({row['defect_type']}), scored low"
        caption = f"{Path(row['name']).name}: {kind}, score {row['score']:.3f}"
        figures.append((caption, _figure_png(figure)))
    return figures


def write_html_report(report: Report, path: Path, title: str) -> Path:
    """Write ``report`` as one HTML file with embedded PNG figures."""
    metrics = report.metrics
    scalar = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_format(v)}</td></tr>" for k, v in scalar.items())
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    confusion = (
        "<table><tr><th></th><th>predicted good</th><th>predicted defective</th></tr>"
        f"<tr><th>good</th><td>{tn}</td><td>{fp}</td></tr><tr><th>defective</th><td>{fn}</td><td>{tp}</td></tr></table>"
    )
    per_type = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_format(entry.get(k, ''))}</td>" for k in ("n_images", "image_auroc", "pixel_auroc", "aupro"))
        + "</tr>"
        for name, entry in metrics["per_defect_type"].items()
    )
    failed = "".join(
        f"<li>{html.escape(name)}: {html.escape(reason)}</li>" for name, reason in metrics["failed"].items()
    )
    notes = "".join(f"<p><b>Note:</b> {html.escape(note)}</p>" for note in metrics.get("notes", []))
    header = "".join(f"<th>{name}</th>" for name in ("type", "images", "image AUROC", "pixel AUROC", "AUPRO"))
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}figure{display:inline-block;margin:0.5em}"
    )
    document = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{style}</style></head><body>
<h1>{html.escape(title)}</h1>{notes}<h2>Metrics</h2><table>{rows}</table>
<h2>Confusion matrix at the threshold</h2>{confusion}
<h2>Per defect type</h2><table><tr>{header}</tr>{per_type}</table>
{_overlap_table(metrics.get("region_overlap"))}<h2>Curves</h2>{_figures_html(_curve_figures(report))}
<h2>Worst-scored images</h2>{_figures_html(_case_figures(report)) or "<p>none kept</p>"}
<h2>Images that could not be read</h2><ul>{failed or "<li>none</li>"}</ul></body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
    return path


def _figures_html(figures: list[tuple[str, str]]) -> str:
    """``(caption, base64 PNG)`` pairs as inline ``<figure>`` elements."""
    return "".join(
        f'<figure><img src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for caption, png in figures
    )


def _overlap_table(overlap: dict | None) -> str:
    if overlap is None:
        return ""
    header = "".join(f"<th>FPR {fpr:.0%}</th>" for fpr in overlap["fpr"])
    body = "".join(
        f"<tr><th>{quantile:.0%} quantile</th>" + "".join(f"<td>{value:.3f}</td>" for value in values) + "</tr>"
        for quantile, values in zip(overlap["quantiles"], overlap["overlap"])
    )
    return f"<h2>Per-region overlap of the defects</h2><table><tr><th></th>{header}</tr>{body}</table>"


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
