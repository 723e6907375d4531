"""The compute layers of a model (Conv2d, Linear) with the shapes they see, as ``LayerSpec``s."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from nora.errors import NoraError
from nora.perf.latency import FP32, LayerSpec, LayerLatency, LatencyMeter


def _pair(value) -> int:
    value = value if isinstance(value, int) else value[0]
    return int(value)


def spec_of(module: nn.Module, input_shape: tuple[int, ...], w_bits: int = FP32, a_bits: int = FP32) -> LayerSpec:
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise NoraError(f"string padding {module.padding!r} is not supported by the latency model")
        return LayerSpec("conv", module.in_channels, module.out_channels, _pair(module.kernel_size),
                         _pair(module.stride), _pair(module.padding), module.groups, int(input_shape[-2]),
                         int(input_shape[-1]), w_bits, a_bits)
    if isinstance(module, nn.Linear):
        return LayerSpec("linear", module.in_features, module.out_features, w_bits=w_bits, a_bits=a_bits)
    raise NoraError(f"{type(module).__name__} is not a compute layer (Conv2d or Linear)")


def compute_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, input shape) of every Conv2d/Linear, in forward order, for a batch of one."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def hook(module, args):
        seen.append((names[id(module)], module, tuple(args[0].shape[1:])))

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


def layer_specs(model: nn.Module, input_shape: tuple[int, ...],
                bits: Mapping[str, tuple[int, int]] | None = None) -> list[tuple[str, LayerSpec]]:
    """Specs of the compute layers; ``bits`` maps a layer name to (weight bits, activation bits)."""
    bits = bits or {}
    return [(name, spec_of(module, shape, *bits.get(name, (FP32, FP32))))
            for name, module, shape in compute_layers(model, input_shape)]


def model_latency(specs: list[tuple[str, LayerSpec]], meter: LatencyMeter) -> tuple[float, list[LayerLatency]]:
    """Sum of the compute layers' latencies (element-wise layers are not counted)."""
    layers = [meter.layer(spec) for _, spec in specs]
    return sum(l.seconds for l in layers), layers
