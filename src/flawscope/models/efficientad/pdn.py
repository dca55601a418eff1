"""Patch description networks (PDN) and the distillation of an EfficientAD teacher.

Batzner, Heckler & Koenig, "EfficientAD: Accurate Visual Anomaly Detection at Millisecond-Level
Latencies", WACV 2024, Table 6 (PDN-S), Table 7 (PDN-M) and Table 8 (autoencoder). A PDN maps
an ``S x S`` image to an ``(S/4 - 8) x (S/4 - 8)`` grid (56 x 56 at 256 px) of descriptors, each of
a 33 x 33 pixel patch (both sizes) at a stride of 4 px; unpadded, as in the paper.

The teacher is a PDN trained to predict the features of a pretrained network at the centre of
every patch (section 3.1 of the paper, there WideResNet-101 on ImageNet). Here the pretrained
network is any flawscope backbone (the offline EfficientNet-Lite by default) and the images are
any folder, or seeded dead-leaves images (:func:`flawscope.data.synthetic.dead_leaves`) when no
folder is given -- which is how the teacher shipped with flawscope was made (see
``docs/methods/efficientad.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from flawscope import __version__
from flawscope._progress import progress_bar
from flawscope.data.datasets import ImageDataset
from flawscope.data.io import read_image
from flawscope.data.synthetic import dead_leaves
from flawscope.data.transforms import luma, normalise, resize_image
from flawscope.errors import ConfigError, ModelFileError
from flawscope.features.backbones import file_fingerprint
from flawscope.features.extractor import FeatureExtractor, local_patch_features

PDN_SIZES = ("small", "medium")
PRECISIONS = ("float32", "bfloat16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEACHER_FORMAT = "flawscope-pdn-teacher"
DEFAULT_TEACHER = "pdn_small_lite0_dead_leaves.safetensors"


def patch_description_network(size: str, out_channels: int) -> nn.Sequential:
    """The PDN of the paper (Table 6 for ``"small"``, Table 7 for ``"medium"``), unpadded.

    Input: ImageNet-normalised ``N x 3 x S x S``; output ``N x out_channels x (S/4 - 8) x (S/4 - 8)``
    for ``S`` a multiple of 4.
    """
    if size == "small":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, out_channels, 4),
        )
    if size == "medium":
        return nn.Sequential(
            nn.Conv2d(3, 256, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 512, 4),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, 2),
            nn.Conv2d(512, 512, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, out_channels, 4),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
    raise ConfigError(f"PDN size must be one of {PDN_SIZES}. Got {size!r} instead.")


def pdn_output_side(image_size: int) -> int:
    """Side of the PDN output grid for an ``image_size`` input (both PDN sizes): 56 for 256."""
    side = image_size
    for kernel, pooled in ((4, True), (4, True), (3, False), (4, False)):
        side = side - kernel + 1
        side = side // 2 if pooled else side
    return side


class EfficientADAutoencoder(nn.Module):
    """The autoencoder of the paper (Table 8) for an ``image_size`` input.

    Six convolutions encode the image to a 64-d code (five of stride 2, then an 8 x 8 one that
    sees the whole ``S/32`` map at 256 px; below 256 px its kernel shrinks to that map's side);
    bilinear upsampling and 4 x 4 convolutions with dropout 0.2 decode it back to the PDN's grid.
    The intermediate sizes are those of the paper at 256 px (3, 8, 15, 32, 63, 127, 56) scaled
    with the input.
    """

    def __init__(self, out_channels: int, image_size: int) -> None:
        super().__init__()
        if image_size < 128:
            raise ConfigError(f"EfficientAD's autoencoder needs image_size >= 128. Got {image_size} instead.")
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, min(8, image_size // 32)),
        )
        s = image_size
        self.sizes = [s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1, pdn_output_side(s)]
        self.decoder = nn.ModuleList(nn.Conv2d(64, 64, 4, 1, 2) for _ in range(6))
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        code = self.encoder(images)
        for size, conv in zip(self.sizes, self.decoder):
            code = self.dropout(F.relu(conv(F.interpolate(code, size=size, mode="bilinear", align_corners=False))))
        return self.head(F.interpolate(code, size=self.sizes[-1], mode="bilinear", align_corners=False))


# ---------------------------------------------------------------------------------- teacher file
@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher file says about itself (kept in the safetensors metadata)."""

    size: str
    out_channels: int
    backbone: str
    layers: list[int]
    image_size: int
    steps: int
    batch_size: int
    precision: str
    data: str
    seed: int
    final_loss: float
    flawscope_version: str


@dataclass
class Teacher:
    """A distilled PDN teacher: the network, its description, and a fingerprint of its weights."""

    network: nn.Sequential
    info: TeacherInfo
    fingerprint: str
    loss_history: list[float] = field(default_factory=list)  # per step, only right after distillation


def default_teacher_path() -> Path:
    """The teacher file shipped inside the package."""
    return Path(str(resources.files("flawscope") / "teachers" / DEFAULT_TEACHER))


def save_teacher(teacher: Teacher, path: str | Path) -> Path:
    """Write the teacher's weights (float16, a few MB) and its :class:`TeacherInfo` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().half().contiguous() for name, value in teacher.network.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": TEACHER_FORMAT, "info": json.dumps(asdict(teacher.info))})
    return path


def load_teacher(path: str | Path | None = None) -> Teacher:
    """Load a teacher written by :func:`save_teacher`; ``None`` = the shipped default."""
    path = default_teacher_path() if path is None else Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"No teacher file at {path}. Make one with 'flawscope distill-teacher' or leave teacher unset."
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != TEACHER_FORMAT:
        raise ModelFileError(f"{path} is not a flawscope teacher file (format {metadata.get('format')!r}).")
    info = TeacherInfo(**json.loads(metadata["info"]))
    network = patch_description_network(info.size, info.out_channels)
    try:
        network.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    except RuntimeError as error:
        raise ModelFileError(
            f"Teacher file {path} does not hold a PDN-{info.size} with {info.out_channels} outputs: {error}"
        ) from None
    network.eval().requires_grad_(False)
    return Teacher(network, info, file_fingerprint(path))


# ---------------------------------------------------------------------------------- distillation
PATCH_SIDE = 33  # the receptive field of one PDN output, both sizes


def teacher_targets(extractor: FeatureExtractor, images: torch.Tensor, grid: int) -> torch.Tensor:
    """Backbone features at the centre of every PDN patch: ``N x C x grid x grid``.

    ``images`` (``N x 3 x S x S`` in [0, 1]) are shown to the backbone at twice their size, so its
    stride-8 stage has a cell every 4 px of the PDN's input, like the PDN; the locally aware
    features (3 x 3 averaged, stages concatenated) are then sampled bilinearly at the centres of
    the PDN's 33-pixel receptive fields, ``4 i + 33 / 2`` for output ``i``.
    """
    size = images.shape[-1]
    backbone_input = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    features = local_patch_features(extractor(normalise(backbone_input, extractor.cfg.mean, extractor.cfg.std)))
    centres = (4 * torch.arange(grid, dtype=torch.float32) + PATCH_SIDE / 2) / size * 2 - 1  # grid_sample coordinates
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    where = torch.stack((xs, ys), dim=-1).to(features.device).expand(images.shape[0], -1, -1, -1)
    return F.grid_sample(features.float(), where, mode="bilinear", align_corners=False)


def _distillation_images(
    images: ImageDataset | None, dead_leaves_share: float, image_size: int, generator: np.random.Generator
) -> Iterator[torch.Tensor]:
    """An endless stream of ``3 x S x S`` images in [0, 1]: with probability ``dead_leaves_share`` a
    fresh dead-leaves image, else a random image of ``images`` (random square crop of at least half
    its shorter side, random horizontal flip); one in ten turned grey, as in the paper."""
    while True:
        if images is None or generator.uniform() < dead_leaves_share:
            image = torch.from_numpy(dead_leaves(generator, image_size)).permute(2, 0, 1)
        else:
            pixels = read_image(images.samples[int(generator.integers(len(images)))].image)
            height, width = pixels.shape[:2]
            side = int(generator.uniform(0.5, 1.0) * min(height, width))
            top, left = int(generator.integers(height - side + 1)), int(generator.integers(width - side + 1))
            image = resize_image(pixels[top : top + side, left : left + side], image_size)
            if generator.uniform() < 0.5:
                image = image.flip(-1)
        if generator.uniform() < 0.1:
            image = luma(image).expand(3, -1, -1)
        yield image.float().contiguous()


def distill_teacher(
    *,
    images: ImageDataset | None = None,
    dead_leaves_share: float | None = None,
    size: str = "small",
    backbone: str = "tf_efficientnet_lite0",
    layers: Sequence[int] = (2, 3),
    weights: str | None = None,
    image_size: int = 256,
    steps: int = 1000,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    precision: str = "float32",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Teacher:
    """Distil a PDN from ``backbone`` (section 3.1 of the paper).

    The defaults are those of the shipped teacher: 1,000 steps of 8 images at a learning rate of
    1e-3, a CPU's hour; the paper took 60,000 steps of 16 ImageNet images at 1e-4.

    The targets are standardised per channel with statistics of ``min(steps, 100)`` batches
    (the paper's feature normalisation); the PDN minimises the mean squared error to them with
    Adam. Each image is a seeded dead-leaves image with probability ``dead_leaves_share``
    (``None`` = 1 without ``images``, 0 with them), else a random crop of one of ``images``.
    ``precision="bfloat16"`` runs the PDN's forward and backward passes under bfloat16 autocast (about
    2.5x faster on a CPU with AVX512-BF16; the weights stay float32).
    """
    if image_size % 4 or image_size < 128:
        raise ConfigError(f"image_size must be a multiple of 4 and >= 128. Got {image_size} instead.")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}. Got {precision!r} instead.")
    share = (0.0 if images is not None else 1.0) if dead_leaves_share is None else dead_leaves_share
    if not 0.0 <= share <= 1.0 or (images is None and share < 1.0):
        raise ConfigError(
            f"dead_leaves_share must be in [0, 1] (and 1 without images). Got {dead_leaves_share} instead."
        )
    if images is not None and len(images) == 0:
        raise ConfigError(f"{images!r} holds no images to distil on.")
    device = torch.device(device)
    generator = np.random.default_rng(seed)
    stream = _distillation_images(images, share, image_size, generator)
    extractor = FeatureExtractor(backbone, layers, weights).to(device).eval()
    out_channels = sum(extractor.channels)
    grid = pdn_output_side(image_size)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([next(stream) for _ in range(batch_size)]).to(device)
        with torch.inference_mode():
            targets = teacher_targets(extractor, pixels, grid)
        return normalise(pixels, IMAGENET_MEAN, IMAGENET_STD), targets.clone()

    mean, std = _target_statistics([batch()[1] for _ in range(min(steps, 100))])
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network = patch_description_network(size, out_channels).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    losses: list[float] = []
    with progress_bar("distilling teacher", steps, progress) as bar:
        for _ in range(steps):
            inputs, targets = batch()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                outputs = network(inputs)
            loss = F.mse_loss(outputs.float(), (targets - mean) / std)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.advance()
    network.eval().requires_grad_(False)
    data = "dead leaves (seeded, generated)" if images is None else f"{images!r}, {share:.0%} dead leaves"
    info = TeacherInfo(
        size,
        out_channels,
        backbone,
        list(layers),
        image_size,
        steps,
        batch_size,
        precision,
        data,
        seed,
        float(np.mean(losses[-100:])),
        __version__,
    )
    return Teacher(network.cpu(), info, fingerprint="", loss_history=losses)


def _target_statistics(targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and deviation of stacked ``N x C x h x w`` target batches, shaped ``1 x C x 1 x 1``."""
    stacked = torch.cat(targets)
    mean = stacked.mean(dim=(0, 2, 3), keepdim=True)
    std = stacked.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return mean, std


__all__ = [
    "EfficientADAutoencoder",
    "Teacher",
    "TeacherInfo",
    "default_teacher_path",
    "distill_teacher",
    "load_teacher",
    "patch_description_network",
    "pdn_output_side",
    "save_teacher",
]
