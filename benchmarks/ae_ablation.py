"""SSIM autoencoder ablation in the manner of Bergmann et al. (2019), Table II: latent size d, SSIM
window K and patch size, one varied at a time around d = 100, K = 11, 128 px patches.

Every setting is trained on the same good images with the same reduced schedule (a 2-core CPU
cannot train 11 networks for 200 epochs) and scored by pixel AUROC (and AUPRO) on the same
test images, so the settings compare with each other, not with the paper's absolute values.
Results go to ``benchmarks/results/ae_ablation.json`` and a markdown table is printed.

    .venv/bin/python benchmarks/ae_ablation.py --data ../shared/datasets/magnetic_tile
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE = {"latent_dim": 100, "ssim_window": 11, "patch_size": 128}
VARIED = {"latent_dim": (50, 100, 200, 500, 1000), "ssim_window": (3, 7, 11, 15, 19), "patch_size": (32, 64, 128)}


def in_memory(dataset, every: int):
    """Every ``every``-th sample of ``dataset``, decoded once (with masks where they exist)."""
    from flawscope.data.datasets import InMemoryDataset
    from flawscope.data.io import read_image

    samples = dataset.samples[::every]
    images = [read_image(sample.image) for sample in samples]
    masks = [sample.read_mask(image.shape[:2]) for sample, image in zip(samples, images)]
    return InMemoryDataset(images, [s.label for s in samples], masks, [s.name for s in samples])


def settings() -> list[dict[str, int]]:
    """The base setting and every one-at-a-time variation of it, without repeats."""
    out = [dict(BASE)]
    for name, values in VARIED.items():
        out += [{**BASE, name: value} for value in values if value != BASE[name]]
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import flawscope as fs
    from flawscope.metrics import pixel_metrics
    from flawscope.workflow import open_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="An MVTec-layout category with masks.")
    parser.add_argument("--train-every", type=int, default=4, help="Use every n-th training image.")
    parser.add_argument("--test-every", type=int, default=3, help="Use every n-th test image.")
    parser.add_argument("--n-patches", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "ae_ablation.json")
    args = parser.parse_args()

    train = in_memory(open_data(args.data, "train"), args.train_every)
    test = in_memory(open_data(args.data, "test"), args.test_every)
    rows = []
    for setting in settings():
        started = time.perf_counter()
        model = fs.create("ae_ssim", n_patches=args.n_patches, epochs=args.epochs, device="cpu", **setting)
        model.fit(train, progress=False)
        fit_seconds = time.perf_counter() - started
        prediction = model.predict(test, progress=False)
        masks = [sample.mask for sample in test.samples]
        pixel = pixel_metrics(prediction.anomaly_maps, masks)
        rows.append(
            {
                **setting,
                "pixel_auroc": pixel["pixel_auroc"],
                "aupro": pixel["aupro"],
                "final_loss": model.loss_history_[-1],
                "fit_seconds": round(fit_seconds, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "data": args.data,
        "n_train": len(train),
        "n_test": len(test),
        "n_patches": args.n_patches,
        "epochs": args.epochs,
        "rows": rows,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("| d | K | patch | pixel AUROC | AUPRO | fit s |\n|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['latent_dim']} | {row['ssim_window']} | {row['patch_size']} | {row['pixel_auroc']:.3f} | "
            f"{row['aupro']:.3f} | {row['fit_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
