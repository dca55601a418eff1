"""Export a fitted detector to ONNX (and OpenVINO), and prove the export scores as the detector does.

The graph is the detector's own scoring: ``N x 3 x H x W`` float32 RGB in [0, 1] at the model's input
size (batch size free) -> image scores ``(N,)`` and anomaly maps ``(N, h, w)`` at model resolution,
normalisation and smoothing included (:meth:`Detector._model_input`, :meth:`Detector._score_batch`).
What depends on the input image -- reading, resizing to the input size, resizing maps to the image's own
size -- and the decision -- thresholds, opening, boxes -- stay outside, described in ``metadata.json``
and done by :mod:`flawscope.runtime`: the threshold is never baked into the graph.

PatchCore's nearest-neighbour search is in the graph: squared distances to each chunk of 1,024 memory-bank
rows by a MatMul, each chunk's ReduceMin (+ ArgMin where the index is used), then the minimum of those (the
chunks are initializers; :class:`~flawscope.features.neighbours.GraphSearch`), so the runtime re-implements
none of PatchCore's scoring. A TopK in place of ReduceMin took 134 ms per image in onnxruntime, against 47;
the chunks keep the distance block at queries x 1,024 floats (3 MB per 224 px image, where the whole default
bank's was 49 MB): the runtime's peak RSS at batch 8 fell from 617 to 238 MiB (``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flawscope import __version__
from flawscope.errors import ConfigError
from flawscope.models.base import Detector
from flawscope.runtime.graphs import GRAPH_FILES
from flawscope.runtime.metadata import write_metadata

FORMATS = ("onnx", "openvino")
OPSET = 18
# parity of an export with its detector: scores within SCORE_RTOL relative, maps within MAP_ATOL absolute --
# in units of the map's largest value where that exceeds 1 (DFR's maps reach thousands, where float32 itself
# steps by 1e-4)
SCORE_RTOL = 1e-4
MAP_ATOL = 1e-3
_EXAMPLE_BATCH = 2
_log = logging.getLogger(__name__)


class ScoringGraph(nn.Module):
    """A detector's scoring as a module: images in [0, 1] at the input size -> ``(scores, maps)``."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = self.detector._score_batch(self.detector._model_input(images))
        return scores.float(), maps.float()


def export_detector(detector: Detector, out: str | Path, graph_format: str = "onnx") -> Path:
    """Write ``out/model.onnx`` (and for ``openvino`` also ``out/model.xml`` + ``model.bin``) and
    ``out/metadata.json``; returns ``out``.

    The metadata names the saved model directory the detector came from by its content hash
    (``detector.version_``, :func:`flawscope.serialization.content_hash`); a detector changed since it was
    saved or loaded (or never saved) is saved to a temporary directory and that is hashed.
    """
    if graph_format not in FORMATS:
        raise ConfigError(f"The export format must be one of {FORMATS}. Got {graph_format!r} instead.")
    detector._check_fitted()
    refusal = detector._export_refusal("onnx") or detector._export_refusal(graph_format)
    if refusal is not None:
        raise ConfigError(f"{type(detector).__name__} cannot be exported to {graph_format}: {refusal}")
    if detector.device_.type != "cpu":
        raise ConfigError(
            f"Export a model on the CPU (this one is on {detector.device_}): fs.load(path, device='cpu') "
            "or 'flawscope export', which loads it there."
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    content_hash = detector.version_ or _hash_of_saved(detector)
    input_info = detector._export_input()
    _write_onnx(detector, input_info["size"], out / GRAPH_FILES["onnx"])
    formats = ["onnx"]
    if graph_format == "openvino":
        _write_openvino(out / GRAPH_FILES["onnx"], out / GRAPH_FILES["openvino"])
        formats.append("openvino")
    write_metadata(out, _metadata(detector, input_info, content_hash, formats, graph_format))
    return out


def _hash_of_saved(detector: Detector) -> str:
    with tempfile.TemporaryDirectory() as directory:
        detector.save(directory)  # sets version_: the hash of what was written
    assert detector.version_ is not None
    return detector.version_


def _write_onnx(detector: Detector, size: list[int], path: Path) -> None:
    """Trace the scoring graph with torch.export and write it as ONNX, the batch size left free.

    Height and width are fixed: a model that keeps each image's aspect ratio is exported at its training
    images' input size (free height and width took 335 s to export a 64 px PatchCore on 2 cores, against 15 s).
    """
    height, width = size
    example = torch.rand(_EXAMPLE_BATCH, 3, height, width, generator=torch.Generator().manual_seed(0))
    free = {0: torch.export.Dim.DYNAMIC}
    printed = io.StringIO()  # torch.onnx reports its steps on standard output; the library never prints
    with detector._export_context(), torch.no_grad(), contextlib.redirect_stdout(printed):
        torch.onnx.export(
            ScoringGraph(detector).eval(),
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["scores", "maps"],
            dynamic_shapes=(free,),
            opset_version=OPSET,
            external_data=False,
        )
    _log.debug("torch.onnx: %s", printed.getvalue())


def _write_openvino(onnx_path: Path, xml_path: Path) -> None:
    try:
        import openvino
    except ImportError as error:
        raise ConfigError("Export to OpenVINO needs openvino: pip install openvino") from error
    openvino.save_model(openvino.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _metadata(
    detector: Detector, input_info: dict[str, Any], content_hash: str, formats: list[str], default_format: str
) -> dict[str, Any]:
    exporter = {name: _package_version(name) for name in ("torch", "onnx", "onnxscript")}
    if "openvino" in formats:
        exporter["openvino"] = _package_version("openvino")
    return {
        "model": {
            "method": detector.name,
            "params": detector.get_params(),
            "content_hash": content_hash,
            "flawscope_version": __version__,
        },
        "graph": {
            "formats": formats,
            "default_format": default_format,
            "files": {name: GRAPH_FILES[name] for name in formats},
            "opset": OPSET,
            "exporter": exporter,
            "inputs": {"images": "N x 3 x H x W float32, RGB in [0, 1] at the input size (N free)"},
            "outputs": {
                "scores": "N float32 image scores, higher = more anomalous",
                "maps": "N x h x w float32 anomaly maps at model resolution (smoothing done)",
            },
        },
        "input": {
            "channels": 3,
            "value_range": [0.0, 1.0],
            "resize": "bilinear, antialiased (torch antialias=True, as Pillow); grey repeated to 3 channels; "
            "clipped to [0, 1]",
            **input_info,
        },
        "postprocess": {
            "map_resize": "bilinear (align_corners=False) to each image's own size",
            "threshold": detector.threshold_,
            "pixel_threshold": detector.pixel_threshold_,
            "calibration": detector.calibration_,
            "default_threshold": vars(detector.default_threshold),
            "decision": "NOT OK when score > threshold; mask = map > pixel_threshold, opened; one box per "
            "8-connected region of the mask",
            "opening": detector.default_opening,
            "opening_shape": detector.opening_shape,
        },
    }


def check_parity(
    detector: Detector, directory: str | Path, images: Any, graph_format: str | None = None
) -> dict[str, Any]:
    """Score ``images`` with the detector and with its export in ``directory``: the largest relative score
    difference, the largest map difference (absolute, in units of the map's largest value where that exceeds
    1), how many labels differ, and ``passed`` (scores within :data:`SCORE_RTOL`, maps within
    :data:`MAP_ATOL` -- or the detector's own tolerance, an int8 model's -- labels identical)."""
    from flawscope import runtime

    score_rtol, map_atol = detector._parity_tolerance() or (SCORE_RTOL, MAP_ATOL)
    exported = runtime.load(directory, graph_format)
    expected = detector.predict(images, progress=False)
    got = exported.predict(images, progress=False)
    scale = np.maximum(np.abs(expected.scores), 1e-12)
    score_error = float(np.max(np.abs(got.scores - expected.scores) / scale)) if len(expected) else 0.0
    map_error = max(
        (
            float(np.abs(mine - theirs).max()) / max(1.0, float(np.abs(theirs).max()))
            for mine, theirs in zip(got.anomaly_maps, expected.anomaly_maps)
        ),
        default=0.0,
    )
    differing = 0
    if expected.labels is not None and got.labels is not None:
        differing = int((expected.labels != got.labels).sum())
    return {
        "graph_format": exported.graph_format,
        "n_images": len(expected),
        "max_score_relative_error": score_error,
        "max_map_error": map_error,
        "labels_differing": differing,
        "score_rtol": score_rtol,
        "map_atol": map_atol,
        "passed": score_error <= score_rtol and map_error <= map_atol and differing == 0,
    }


__all__ = ["FORMATS", "MAP_ATOL", "OPSET", "SCORE_RTOL", "ScoringGraph", "check_parity", "export_detector"]
