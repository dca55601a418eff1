"""Autoencoder speed on this machine: ms per 128 x 128 forward pass (Bergmann et al. 2019 report
2.23 ms on a Tesla V100 for d = 500) and ms per image for every autoencoder method's ``predict``.

The forward pass is timed at batch 1 and at batch 36 (the 6 x 6 windows of one 256-px image at
stride 30), median of ``--repeats`` after a warm-up, under ``torch.inference_mode``. Per-image
latency: each method fitted for one short epoch on synthetic textures (latency does not depend
on what was learnt), then one ``--size``-px image predicted at batch 1. Writes
``benchmarks/results/ae_forward.json``.

    .venv/bin/python benchmarks/ae_forward.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import median_seconds  # noqa: E402

MODELS = ("ae_l2", "ae_ssim", "ae_mse", "vae", "feature_matching_ae")


def main() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    import flawscope as fs
    from flawscope.data.synthetic import make_texture_set
    from flawscope.models.autoencoder import AutoencoderNetwork

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ae_forward.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    forward = {}
    for latent_dim in (100, 500):
        network = AutoencoderNetwork(1, 128, latent_dim).to(device, memory_format=torch.channels_last).eval()
        for batch in (1, 36):
            patches = torch.rand(batch, 1, 128, 128, device=device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                seconds = median_seconds(lambda: network(patches), args.repeats)
            forward[f"d{latent_dim}_batch{batch}"] = {"ms_per_patch": round(1000 * seconds / batch, 3)}
            print(f"d={latent_dim:4d} batch {batch:3d}: {1000 * seconds / batch:7.3f} ms per 128x128 patch", flush=True)
    train = make_texture_set(8, 0, size=(args.size, args.size), seed=0)
    image = make_texture_set(1, 0, size=(args.size, args.size), seed=1).samples[0].image
    per_image = {}
    for name in MODELS:
        model = fs.create(name, n_patches=64, epochs=1, device=args.device).fit(train, progress=False)
        seconds = median_seconds(lambda: model.predict([image], progress=False), max(3, args.repeats // 4))
        per_image[name] = {"ms_per_image": round(1000 * seconds, 1)}
        print(f"{name:20s} {1000 * seconds:8.1f} ms per {args.size}-px image", flush=True)
    payload = {
        "forward_128": forward,
        "predict_image_size": [args.size, args.size],
        "predict": per_image,
        "device": args.device,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "flawscope": fs.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
