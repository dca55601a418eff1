"""Post-training static int8 quantization of inference networks for the CPU.

torch's FX graph mode quantization with the ``x86`` backend (fbgemm/oneDNN kernels, VNNI where
the CPU has it): weights per output channel, activations per tensor with ranges observed on
calibration images. What a calibration learns is the observers' state -- plain float tensors --
so a saved model stores that state and rebuilds the very same int8 network on load.

Two choices make the int8 arithmetic the same on every x86 CPU and in onnxruntime, so an export
keeps its scores (:data:`INT8_SCHEME`):

- weights take 7 bits (-63..63): CPUs without VNNI (AVX2 only) multiply uint8 activations by int8
  weights in pairs summed into 16 bits (``vpmaddubsw``), which saturate when both are near full
  range -- measured on an AVX2 CPU, 4 % of a PDN's outputs off by up to 5 steps in torch and in
  onnxruntime alike, each differently; 255 x 63 x 2 stays below 2**15;
- each convolution's bias is rounded to the grid of its int32 accumulator (input step x weight
  step, per channel), as onnxruntime's QLinearConv must hold it; torch adds the bias in float, and
  that difference alone put 0.04 % of a layer's outputs one step apart, a difference the next
  layers spread to 5 % of the network's output.

:func:`qdq_network` writes an int8 network in the QDQ form ONNX runtimes execute with int8 kernels
(QuantizeLinear / DequantizeLinear around float operators, which onnxruntime fuses into QLinearConv):
the same int8 weights and activation parameters, so an exported int8 model computes what the torch one
does, up to rounding at the edges of a quantization step.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from flawscope.errors import ConfigError, ModelFileError

BACKEND = "x86"
OBSERVER_KEY = "activation_post_process"
INT8_SCHEME = "7-bit weights, bias on the accumulator grid"  # saved with a model; see the module docstring
WEIGHT_RANGE = (-63, 63)  # symmetric: the largest weight of a channel is 63 steps, none rounds to 64


def _check_backend() -> None:
    if BACKEND not in torch.backends.quantized.supported_engines:
        raise ConfigError(
            f"int8 needs torch's {BACKEND!r} quantized engine, which this torch build lacks "
            f"(it has {torch.backends.quantized.supported_engines}); use precision='float32'."
        )
    torch.backends.quantized.engine = BACKEND


def _qconfig_mapping() -> Any:
    """The backend's default (activations per tensor, 7 of 8 bits used) with 7-bit per-channel weights."""
    from torch.ao.quantization import QConfig, get_default_qconfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    weight = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1]
    )
    activation = get_default_qconfig(BACKEND).activation
    return get_default_qconfig_mapping(BACKEND).set_global(QConfig(activation=activation, weight=weight))


def observe_int8(network: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """A copy of ``network`` (eval mode, CPU) with activation observers; run it on calibration inputs."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    _check_backend()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch points this API to torchao, which is not a dependency
        return prepare_fx(copy.deepcopy(network).eval().cpu(), _qconfig_mapping(), (example.cpu(),))


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


def convert_int8(observed: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 network of a calibrated ``observed`` one (float in, float out), its convolutions' biases on
    their accumulators' grids."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = convert_fx(copy.deepcopy(observed))
    for convolution, input_scale in _convolution_input_scales(network):
        weight = convolution.weight()
        grid = torch.tensor(input_scale, dtype=torch.float32) * weight.q_per_channel_scales().float()
        bias = convolution.bias().detach().float()
        convolution.set_weight_bias(weight, torch.round(bias / grid) * grid)
    return network


def _convolution_input_scales(network: torch.fx.GraphModule) -> list[tuple[Any, float]]:
    """Each quantized convolution of ``network`` with the step of the activations it takes."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d
    from torch.ao.nn.quantized import Conv2d

    modules = dict(network.named_modules())
    step_of: dict[torch.fx.Node, float] = {}
    convolutions = []
    for node in network.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            step_of[node] = float(getattr(network, node.args[1].target))
        elif isinstance(module, ConvReLU2d | Conv2d):
            convolutions.append((module, step_of[node.args[0]]))
            step_of[node] = float(module.scale)
        elif node.args and isinstance(node.args[0], torch.fx.Node) and node.args[0] in step_of:
            step_of[node] = step_of[node.args[0]]  # pooling, upsampling, dropout keep their input's grid
    return convolutions


# ---------------------------------------------------------------- the QDQ form, for export
_QD = torch.ops.quantized_decomposed
_ACTIVATION = (0, 255, torch.uint8)  # quint8 activations
_WEIGHT = (-128, 127, torch.int8)  # qint8 weights, per output channel


class _Requantize(nn.Module):
    """Float values rounded to an activation's int8 grid and back: QuantizeLinear + DequantizeLinear."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)

    def integers(self, values: torch.Tensor) -> torch.Tensor:
        """The grid's integers minus the zero point, as float (exact): what int8 kernels compute on."""
        return _QD.quantize_per_tensor(values, self.scale, self.zero_point, *_ACTIVATION).float() - self.zero_point

    def values(self, integers: torch.Tensor) -> torch.Tensor:
        quantized = (integers + self.zero_point).to(torch.uint8)
        return _QD.dequantize_per_tensor(quantized, self.scale, self.zero_point, *_ACTIVATION)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        quantized = _QD.quantize_per_tensor(values, self.scale, self.zero_point, *_ACTIVATION)
        return _QD.dequantize_per_tensor(quantized, self.scale, self.zero_point, *_ACTIVATION)


class _QDQConvolution(nn.Module):
    """A quantized convolution (+ ReLU): int8 weights dequantized per channel, float bias, output requantized."""

    def __init__(self, quantized: Any, relu: bool) -> None:
        super().__init__()
        weight = quantized.weight()
        self.weight_int8: torch.Tensor
        self.weight_scales: torch.Tensor
        self.weight_zero_points: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight_int8", weight.int_repr())
        self.register_buffer("weight_scales", weight.q_per_channel_scales().float())
        self.register_buffer("weight_zero_points", weight.q_per_channel_zero_points().int())
        self.register_buffer("bias", quantized.bias().detach().float())
        self.stride: tuple[int, int] = quantized.stride
        self.padding: tuple[int, int] = quantized.padding
        self.dilation: tuple[int, int] = quantized.dilation
        self.groups: int = quantized.groups
        self.relu = relu
        self.output = _Requantize(quantized.scale, quantized.zero_point)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        weight = _QD.dequantize_per_channel(self.weight_int8, self.weight_scales, self.weight_zero_points, 0, *_WEIGHT)
        out = F.conv2d(values, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return self.output(F.relu(out) if self.relu else out)


class _QDQOnIntegers(nn.Module):
    """A quantized op that keeps its input's parameters (average pooling, bilinear upsampling), computed as
    torch's int8 kernels do: on the grid's integers, rounded half to even (a float pool of dequantized values
    rounds differently on the quarter of 2 x 2 averages that end in .5)."""

    def __init__(self, operation: Callable[[torch.Tensor], torch.Tensor], grid: _Requantize) -> None:
        super().__init__()
        self.operation, self.grid = operation, grid

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.grid.values(torch.round(self.operation(self.grid.integers(values))))


def qdq_network(network: nn.Module) -> nn.Sequential:
    """The int8 ``network`` of :func:`convert_int8` as a float module of quantize / dequantize steps (its
    torch.export graph is ONNX QDQ). Takes the chains of convolutions (+ ReLU), average pooling, bilinear
    upsampling and dropout that EfficientAD's networks are; anything else raises a ConfigError."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d
    from torch.ao.nn.quantized import Conv2d

    if not isinstance(network, torch.fx.GraphModule):
        raise ConfigError(f"qdq_network takes an int8 network of convert_int8, not a {type(network).__name__}.")
    modules = dict(network.named_modules())
    steps: list[nn.Module] = []
    grid: _Requantize | None = None
    for node in network.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            scale, zero_point = (float(getattr(network, argument.target)) for argument in node.args[1:3])
            grid = _Requantize(scale, int(zero_point))
            steps.append(grid)
        elif isinstance(module, ConvReLU2d | Conv2d):
            convolution = _QDQConvolution(module, relu=isinstance(module, ConvReLU2d))
            steps.append(convolution)
            grid = convolution.output
        elif isinstance(module, nn.AvgPool2d) and grid is not None:
            steps.append(_QDQOnIntegers(module, grid))
        elif node.op == "call_function" and node.target is F.interpolate and grid is not None:
            steps.append(_QDQOnIntegers(partial(F.interpolate, *node.args[1:], **node.kwargs), grid))
        elif (
            isinstance(module, nn.Dropout)
            or node.op in ("placeholder", "get_attr", "output")
            or (node.op == "call_method" and node.target == "dequantize")
        ):
            continue
        else:
            raise ConfigError(f"The int8 network has a step the ONNX export does not write: {node.format_node()}")
    return nn.Sequential(*steps)
