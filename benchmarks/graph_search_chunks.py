"""PatchCore's exported graph: its nearest-neighbour search against the whole memory bank in one MatMul, or
against the bank in chunks of rows (each chunk's minimum, then the minimum of those) -- the graph alone, in
onnxruntime and OpenVINO, at batch 1 and 8.

A saved PatchCore (``--model``) is exported once per setting of ``--chunk-rows`` (0: the whole bank at once);
each graph runs through ``flawscope.runtime``'s own graph classes on the first 8 ELPV mono test cells resized
to the input size, median of ``--repeats`` runs after one warm-up; the scores of every setting are recorded
to show they are the same.

    .venv/bin/python benchmarks/graph_search_chunks.py --model SAVED_PATCHCORE_DIR

Writes ``benchmarks/results/graph_search_chunks.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import flawscope as fs  # noqa: E402
import flawscope.models.patchcore as patchcore_module  # noqa: E402
from _timing import median_seconds  # noqa: E402
from flawscope.devices import cpu_description  # noqa: E402
from flawscope.features.neighbours import GraphSearch  # noqa: E402
from flawscope.runtime.graphs import open_graph  # noqa: E402
from flawscope.workflow import evaluation_data  # noqa: E402


def test_batch(size: int, count: int = 8) -> np.ndarray:
    """The first ``count`` ELPV mono test cells as an ``N x 3 x size x size`` float32 batch in [0, 1]."""
    samples = evaluation_data("elpv:mono", supervised=False).samples[:count]
    images = [Image.open(sample.image).convert("RGB").resize((size, size), Image.BILINEAR) for sample in samples]
    return np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images]).transpose(0, 3, 1, 2).copy()


def measure(exported: Path, batch: np.ndarray, repeats: int) -> dict:
    """ms per image of each engine at batch 1 and 8, and the batch's scores from onnxruntime."""
    row: dict = {}
    for engine in ("onnx", "openvino"):
        graph = open_graph(exported, engine)
        for size in (1, len(batch)):
            images = batch[:size].copy()
            seconds = median_seconds(lambda graph=graph, images=images: graph.run(images), repeats)
            row[f"{engine}_ms_per_image_batch{size}"] = round(1000 * seconds / size, 2)
        if engine == "onnx":
            row["scores"] = [round(float(score), 5) for score in graph.run(batch)[0]]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="A saved PatchCore.")
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[0, 4096, 2048, 1024, 512, 0, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "graph_search_chunks.json")
    args = parser.parse_args()
    model = fs.load(args.model, device="cpu")
    bank_rows = int(model.memory_bank_.shape[0])
    batch = test_batch(model.image_size)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, rows in enumerate(args.chunk_rows):
            patchcore_module.GraphSearch = functools.partial(GraphSearch, chunk_rows=rows or bank_rows)
            exported = model.export(Path(scratch) / f"{index}", "openvino")
            runs.append({"chunk_rows": rows or bank_rows, **measure(exported, batch, args.repeats)})
            print(json.dumps(runs[-1]), flush=True)
    payload = {
        "how": f"benchmarks/graph_search_chunks.py {' '.join(sys.argv[1:])}, {datetime.date.today()}",
        "bank": list(model.memory_bank_.shape),
        "machine": {"platform": platform.platform(), **cpu_description()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
