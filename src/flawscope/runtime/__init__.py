"""Run exported models without torch: numpy, Pillow, scipy and onnxruntime (or OpenVINO) only.

>>> from flawscope import runtime
>>> model = runtime.load("runs/tile.onnx")          # doctest: +SKIP
>>> prediction = model.predict(["part.png"])        # doctest: +SKIP

``flawscope export`` writes the directory (:mod:`flawscope.export`); importing this package never imports
torch, so it runs on a line PC with ``pip install "flawscope[runtime]"``.
"""

from flawscope.runtime.metadata import is_exported, read_metadata
from flawscope.runtime.model import ExportedModel, load

__all__ = ["ExportedModel", "is_exported", "load", "read_metadata"]
