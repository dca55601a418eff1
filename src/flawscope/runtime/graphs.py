"""Running an exported scoring graph: onnxruntime for ONNX, OpenVINO for its IR.

Either takes ``N x 3 x H x W`` float32 images in [0, 1] at the model's input size and gives
``(scores (N,), maps (N, h, w))`` as float32 numpy arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from flawscope.errors import ConfigError


class Graph(Protocol):
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class OnnxGraph:
    """An ONNX graph on onnxruntime's CPU provider (``threads`` 0 = onnxruntime's choice: one per core)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ConfigError(
                f"{path} is an ONNX graph; running it needs onnxruntime: pip install 'flawscope[runtime]'"
            ) from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(None, {self.input_name: images})
        return scores, maps


class OpenVinoGraph:
    """An OpenVINO IR (``model.xml`` + ``model.bin``) compiled for the CPU, in float32 (OpenVINO would run
    float32 graphs in bfloat16 on CPUs that have it, and the scores would no longer be the exported model's)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        try:
            import openvino
        except ImportError as error:
            raise ConfigError(
                f"{path} is an OpenVINO model; running it needs openvino: pip install openvino"
            ) from error
        core = openvino.Core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(path), "CPU", config)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = self.compiled(images)
        return np.asarray(outputs[0]), np.asarray(outputs[1])


GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
GRAPHS: dict[str, type[OnnxGraph] | type[OpenVinoGraph]] = {"onnx": OnnxGraph, "openvino": OpenVinoGraph}


def open_graph(directory: Path, graph_format: str, threads: int = 0) -> Graph:
    """The graph of ``graph_format`` in an exported ``directory``."""
    if graph_format not in GRAPHS:
        raise ConfigError(f"Unknown graph format {graph_format!r}; known: {', '.join(GRAPHS)}.")
    return GRAPHS[graph_format](directory / GRAPH_FILES[graph_format], threads)


__all__ = ["GRAPHS", "GRAPH_FILES", "Graph", "OnnxGraph", "OpenVinoGraph", "open_graph"]
