"""Where a detector runs: ``device="auto"`` picks CUDA when torch sees it, else the CPU."""

from __future__ import annotations

import torch

from flawscope.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but torch sees no CUDA device; use device='auto' or 'cpu'.")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"Unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'.") from error


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 in hardware (AVX512-BF16 or AMX-BF16); elsewhere torch and OpenVINO
    emulate it, slower than float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cpu_description() -> dict[str, str | bool]:
    """What a benchmark record says of its CPU: the instruction set torch's kernels use (``AVX2``, ``AVX512``) and
    whether it computes bfloat16 natively (where ``training_precision="auto"`` trains in bfloat16)."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "bfloat16_native": native_bfloat16()}
