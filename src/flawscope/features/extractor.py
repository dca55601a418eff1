"""Multi-layer feature maps from a frozen backbone, and locally aware patch features."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flawscope.chunks import in_passes
from flawscope.devices import native_bfloat16
from flawscope.errors import ConfigError
from flawscope.features.backbones import BackboneCfg, backbone_cfg, create_feature_backbone

# What runs a frozen backbone on the CPU: torch itself, or OpenVINO's CPU runtime (the ``openvino`` extra), which
# ran EfficientNet-Lite0's first four stages 2 to 3 times faster on a 2-core CPU (4.4 against 9 to 14 ms per 224 px
# image) with feature maps within 1e-4 of torch's; ``openvino-bf16`` computes in bfloat16 (CPUs with AVX512-BF16 or
# AMX only), about twice as fast again, its features about 1 % off (benchmarks/patchcore_frontier.py).
ENGINES = ("torch", "openvino", "openvino-bf16")


class FeatureExtractor(nn.Module):
    """A frozen timm backbone that returns the feature maps of the stages ``layers``.

    ``layers`` are timm ``out_indices``: for EfficientNet-Lite, 0..4 are the stages of stride
    2, 4, 8, 16 and 32. The backbone runs only as far as the deepest requested stage.

    Examples
    --------
    >>> extractor = FeatureExtractor("tf_efficientnet_lite0", layers=(2, 3))
    >>> [tuple(f.shape) for f in extractor(torch.zeros(1, 3, 224, 224))]
    [(1, 40, 28, 28), (1, 112, 14, 14)]
    """

    def __init__(self, backbone: str, layers: Sequence[int], weights: str | None = None) -> None:
        super().__init__()
        self.cfg: BackboneCfg = backbone_cfg(backbone)
        self.model, self.fingerprint = create_feature_backbone(backbone, layers, weights)
        _drop_unused_blocks(self.model)
        self.model = self.model.to(memory_format=torch.channels_last)  # about 2x faster convolutions, on CPU too
        info: Any = self.model.feature_info  # timm's FeatureInfo
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        self.engine = "torch"
        self._compiled: Callable[[torch.Tensor], list[torch.Tensor]] | None = None

    # On a CPU small batches run faster (the activations stay in cache) and keep peak memory
    # low: at 224 px on a 2-core machine, 6.0 ms/image at 2 images per pass against 13.6 at 16.
    cpu_micro_batch = 2

    def use_engine(self, engine: str) -> FeatureExtractor:
        """Run the backbone through ``engine`` (:data:`ENGINES`) from now on; ``openvino`` converts it once (about
        2 s) and runs on the CPU only."""
        if engine not in ENGINES:
            raise ConfigError(f"The backbone engine must be one of {ENGINES}. Got {engine!r} instead.")
        if engine == "openvino-bf16" and not native_bfloat16():
            raise ConfigError(
                "engine='openvino-bf16' needs a CPU that computes in bfloat16 (AVX512-BF16 or AMX), which this one "
                "does not: use engine='openvino'."
            )
        self.engine = engine
        self._compiled = None if engine == "torch" else _openvino_backbone(self.model, engine == "openvino-bf16")
        return self

    @contextlib.contextmanager
    def running_torch(self) -> Iterator[None]:
        """Within the block the backbone runs in torch whatever the engine (an exported graph traces its modules)."""
        compiled, self._compiled = self._compiled, None
        try:
            yield
        finally:
            self._compiled = compiled

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``N x 3 x H x W`` normalised images -> one ``N x C_l x H_l x W_l`` map per layer."""
        if self._compiled is not None:
            if images.device.type != "cpu":
                raise ConfigError(f"The openvino backbone engine runs on the CPU; these images are on {images.device}.")
            return self._compiled(images)
        images = images.contiguous(memory_format=torch.channels_last)
        if images.device.type != "cpu":
            return self.model(images)
        return in_passes(self.model, images, self.cpu_micro_batch)


def _openvino_backbone(model: nn.Module, bfloat16: bool) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``model`` converted to OpenVINO (any batch, height and width) and compiled for the CPU with torch's thread
    count, computing in float32 or ``bfloat16``: a function of a CPU image batch giving its feature maps (float32),
    one call at a time."""
    try:
        import openvino
    except ImportError as error:
        raise ConfigError("engine='openvino' needs OpenVINO: pip install 'flawscope[openvino]'.") from error
    example = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        converted = openvino.convert_model(model.eval(), example_input=example, input=[-1, 3, -1, -1])
    # float32 unless asked: on a CPU with AVX512-BF16 or AMX, OpenVINO would otherwise run in bfloat16 by itself,
    # its features about 1 % off torch's (image scores up to 9 %, measured)
    settings = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "bf16" if bfloat16 else "f32",
    }
    compiled = openvino.Core().compile_model(converted, "CPU", settings)
    request = compiled.create_infer_request()
    one_at_a_time = threading.Lock()

    def run(images: torch.Tensor) -> list[torch.Tensor]:
        with one_at_a_time:
            outputs = request.infer([images.float().contiguous().numpy()])
            return [torch.from_numpy(outputs[port].copy()) for port in compiled.outputs]

    return run


def _drop_unused_blocks(model: nn.Module) -> None:
    """Cut the trailing ``blocks`` a timm EfficientNet-style feature model computes but never returns.

    timm's ``EfficientNetFeatures`` runs every block even when the deepest requested stage is
    in the middle; the blocks after it only cost time. Models without a ``blocks`` sequence (their
    timm feature wrappers already stop at the last layer) are left as they are.
    """
    info: Any = model.feature_info  # timm's FeatureInfo
    deepest = info.module_name()[-1]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and deepest.startswith("blocks."):
        last = int(deepest.split(".")[1])
        model.blocks = blocks[: last + 1]


def patch_rows(patches: torch.Tensor) -> torch.Tensor:
    """``B x D x h x w`` patch features -> ``(B * h * w) x D`` rows, row-major over (image, h, w)."""
    return patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])


def local_patch_features(feature_maps: Sequence[torch.Tensor], neighbourhood: int = 3) -> torch.Tensor:
    """Locally aware patch features (Roth et al. 2022, eq. 2).

    Each map is averaged over a ``neighbourhood x neighbourhood`` window (stride 1, zero padding
    counted in the average as in the authors' code, so the resolution is kept), every map is
    upsampled bilinearly to the largest one, and the maps are concatenated along channels.
    Counting the padding was measured better than ignoring it: ELPV mono image AUROC 0.962 against
    0.956 (seed 0).

    Returns
    -------
    torch.Tensor
        ``N x D x H x W`` with ``D = sum(C_l)`` and ``H x W`` the size of the largest map.
    """
    pool = nn.AvgPool2d(neighbourhood, stride=1, padding=neighbourhood // 2)
    target = max((f.shape[-2:] for f in feature_maps), key=lambda hw: hw[0] * hw[1])
    pooled = []
    for feature_map in feature_maps:
        feature_map = pool(feature_map.contiguous(memory_format=torch.channels_last))  # 9x faster than NCHW
        if feature_map.shape[-2:] != target:
            feature_map = F.interpolate(feature_map, size=tuple(target), mode="bilinear", align_corners=False)
        pooled.append(feature_map)
    return torch.cat(pooled, dim=1)
