"""An exported model: its graph plus what ``metadata.json`` says to do around it, in numpy, Pillow and scipy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flawscope.data.sizes import aspect_size
from flawscope.errors import ConfigError, DataError
from flawscope.postprocess import ThresholdRule
from flawscope.resize import resize_image, resize_map
from flawscope.runtime.graphs import Graph, open_graph
from flawscope.runtime.metadata import read_metadata
from flawscope.scoring import Scorer
from flawscope.tiling import Tiling


class ExportedModel(Scorer):
    """A model written by ``flawscope export``, scored without torch: ``predict`` / ``iter_predict`` /
    ``decide`` / ``calibrate`` as on the :class:`~flawscope.models.base.Detector` it was exported from, with
    the same :class:`~flawscope.results.Prediction` records.

    Reading, resizing to the input size, the graph (scores and maps at model resolution), resizing each map
    to its image's own size, and the thresholds, opening and boxes of ``metadata.json``. The thresholds are
    not in the graph: set ``threshold_`` / ``pixel_threshold_`` or call ``calibrate`` to change them.
    """

    def __init__(self, directory: Path, metadata: dict[str, Any], graph: Graph, graph_format: str) -> None:
        self.directory = directory
        self.metadata = metadata
        self.graph = graph
        self.graph_format = graph_format
        self.name: str = metadata["model"]["method"]
        self.batch_size = int(metadata["model"]["params"].get("batch_size", 8))
        postprocess = metadata["postprocess"]
        self.threshold_ = postprocess["threshold"]
        self.pixel_threshold_ = postprocess["pixel_threshold"]
        self.calibration_ = postprocess["calibration"]
        self.default_opening = int(postprocess["opening"])
        self.opening_shape = postprocess["opening_shape"]
        self.default_threshold = ThresholdRule(**postprocess.get("default_threshold", {}))
        self._size = metadata["input"]["size"]
        self._short_side = metadata["input"]["aspect_short_side"]
        self._tiles = Tiling.from_params(metadata["model"]["params"])

    def __repr__(self) -> str:
        return f"ExportedModel({self.name!r}, {str(self.directory)!r}, {self.graph_format!r})"

    @property
    def content_hash(self) -> str:
        """The content hash of the model directory it was exported from."""
        return str(self.metadata["model"]["content_hash"])

    def _check_fitted(self) -> None:
        """An exported model is always fitted."""

    @property
    def input_size(self) -> tuple[int, int]:
        """The graph's input size: every image is resized to it."""
        return int(self._size[0]), int(self._size[1])

    def _tiling(self) -> Tiling | None:
        return self._tiles

    def _check_image(self, image: np.ndarray) -> None:
        """DataError for an image a model that keeps the aspect ratio would score at another size than its graph
        takes (with ``on_error="skip"`` the rest of the batch is scored); a tiled model's graph takes its tiles."""
        height, width = (self._tiles.size, self._tiles.size) if self._tiles is not None else image.shape[:2]
        if self._short_side is None:
            return
        needed = aspect_size(height, width, int(self._short_side))
        if needed != self.input_size:
            raise DataError(
                f"This exported {self.name} keeps the aspect ratio of its training images "
                f"({self.input_size[0]} x {self.input_size[1]} input); a {height} x {width} image would be scored "
                f"at {needed[0]} x {needed[1]}. Score it with the fitted model (flawscope predict MODEL_DIR), or "
                "give images shaped like the training images."
            )

    def _score_pixels(self, pixels: list[np.ndarray]) -> list[tuple[float, np.ndarray]]:
        scores, maps = self.graph.run(np.stack([resize_image(image, self.input_size) for image in pixels]))
        return [
            (float(score), resize_map(anomaly_map, image.shape[:2]))
            for score, anomaly_map, image in zip(scores, maps, pixels)
        ]


def load(directory: str | Path, graph_format: str | None = None, threads: int = 0) -> ExportedModel:
    """Load an exported model directory; ``graph_format`` ('onnx' or 'openvino') defaults to the one it was
    exported for; ``threads`` 0 lets the engine use every core."""
    directory = Path(directory)
    metadata = read_metadata(directory)
    chosen = graph_format or metadata["graph"]["default_format"]
    if chosen not in metadata["graph"]["formats"]:
        raise ConfigError(
            f"{directory} holds the graph as {', '.join(metadata['graph']['formats'])}, not {chosen}; "
            f"export it with --format {chosen}."
        )
    return ExportedModel(directory, metadata, open_graph(directory, chosen, threads), chosen)


__all__ = ["ExportedModel", "load"]
