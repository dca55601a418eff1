"""Post-training static int8 quantization of inference networks for the CPU.

torch's FX graph mode quantization with the ``x86`` backend (fbgemm/oneDNN kernels, VNNI where
the CPU has it): weights per output channel, activations per tensor with ranges observed on
calibration images. What a calibration learns is the observers' state -- plain float tensors --
so a saved model stores that state and rebuilds the very same int8 network on load.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from flawscope.errors import ConfigError, ModelFileError

BACKEND = "x86"
OBSERVER_KEY = "activation_post_process"


def _check_backend() -> None:
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise ConfigError(
            f"int8 needs torch's {BACKEND!r} quantized engine, which this torch build lacks "
            f"(it has {torch.backends.quantized.supported_engines}); use precision='float32'."
        )
    torch.backends.quantized.engine = BACKEND


def observe_int8(network: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """A copy of ``network`` (eval mode, CPU) with activation observers; run it on calibration inputs."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    _check_backend()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch points this API to torchao, which is not a dependency
        return prepare_fx(copy.deepcopy(network).eval().cpu(), get_default_qconfig_mapping(BACKEND), (example.cpu(),))


def calibrate_int8(network: nn.Module, calibration: torch.Tensor, batch_size: int) -> torch.fx.GraphModule:
    """``observe_int8(network)`` run over ``calibration`` (``batch_size`` at a time) to set its activation ranges."""
    observed = observe_int8(network, calibration[:1])
    with torch.inference_mode():
        for chunk in calibration.cpu().split(batch_size):
            observed(chunk)
    return observed


def observer_state(observed: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """What a calibration learned: the observers' tensors (not the network's weights)."""
    return {key: value.clone() for key, value in observed.state_dict().items() if OBSERVER_KEY in key}


def restore_observed(network: nn.Module, example: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """``observe_int8(network)`` with a saved calibration loaded into its observers."""
    observed = observe_int8(network, example)
    expected = set(observer_state(observed))
    if set(state) != expected:
        raise ModelFileError(
            f"its int8 calibration does not fit this network: {len(state)} observer tensors "
            f"saved, {len(expected)} expected."
        )
    observed.load_state_dict(state, strict=False)
    return observed


def convert_int8(observed: torch.fx.GraphModule) -> nn.Module:
    """The int8 network of a calibrated ``observed`` one (float in, float out)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(copy.deepcopy(observed))
