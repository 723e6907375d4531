"""Compression actions: dependency-aware channel pruning, mixed-precision fake quantisation, and both.

A policy gives each compute layer (Conv2d/Linear) a pruning ratio for its output channels and bit
widths for its weights and its input activations (32 = float). Pruning uses torch-pruning's
dependency graph, so coupled layers (a residual sum, the BatchNorm after a conv, the next layer's
input channels) shrink together, with L1-magnitude channel importance and channel counts rounded
to a multiple. Quantisation is simulated ("fake"): weights symmetric per output channel, inputs per
tensor with a scale calibrated once, both with a straight-through gradient so the compressed model
can be fine-tuned.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nora.errors import NoraError

FP32 = 32
#: What a quantisation action in [0, 1] selects, lowest first.
BIT_CHOICES = (2, 3, 4, 5, 6, 7, 8, FP32)
MODES = {"joint": ("prune", "w_bits", "a_bits"), "prune": ("prune",), "quant": ("w_bits", "a_bits")}
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class LayerInfo:
    """A compute layer of the reference model, as the agents see it."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    input_shape: tuple[int, ...]
    macs: int
    params: int
    prunable: bool  # the output layer keeps its classes


@dataclass
class LayerPolicy:
    name: str
    sparsity: float = 0.0
    w_bits: int = FP32
    a_bits: int = FP32

    def to_dict(self) -> dict:
        return asdict(self)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise NoraError(f"unknown compression mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def check_model(model: nn.Module) -> None:
    """Refuse, in one line naming them, layers that hold parameters the pruner cannot handle."""
    bad = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            bad.append(f"{name} (grouped Conv2d, groups={module.groups})")
        elif own and not isinstance(module, _SUPPORTED):
            bad.append(f"{name or '<root>'} ({type(module).__name__})")
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and list(module.children()):
            bad.append(f"{name} ({type(module).__name__} with sub-modules)")
    if bad:
        raise NoraError(f"cannot compress this model: layers the pruner cannot handle: {', '.join(bad)} "
                        f"(supported: Conv2d with groups=1, Linear, BatchNorm)")


def compute_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerInfo]:
    from nora.perf.layers import compute_layers as walk
    from nora.perf.layers import spec_of

    check_model(model)
    found = walk(model, tuple(input_shape))
    if not found:
        raise NoraError("the model has no Conv2d or Linear layer to compress")
    names = [n for n, _, _ in found]
    if len(set(names)) != len(names):
        raise NoraError("a compute layer is called more than once per forward; nora compresses each layer once")
    out = []
    for index, (name, module, shape) in enumerate(found):
        spec = spec_of(module, shape)
        out.append(LayerInfo(name, spec.kind, spec.in_channels, spec.out_channels, spec.kernel, spec.stride, shape,
                             spec.macs, sum(p.numel() for p in module.parameters()),
                             prunable=index < len(found) - 1))
    return out


def bits_of(action: float) -> int:
    return BIT_CHOICES[min(int(float(action) * len(BIT_CHOICES)), len(BIT_CHOICES) - 1)]


def action_of_bits(bits: int) -> float:
    return (BIT_CHOICES.index(bits) + 0.5) / len(BIT_CHOICES)


def policy_from_actions(layers: Sequence[LayerInfo], actions: Sequence[Sequence[float]], mode: str,
                        max_sparsity: float = 0.8) -> list[LayerPolicy]:
    """Map each layer's actions in [0, 1] to a pruning ratio and bit widths for the given mode."""
    keys = MODES[check_mode(mode)]
    policy = []
    for layer, act in zip(layers, actions):
        values = dict(zip(keys, (float(min(max(a, 0.0), 1.0)) for a in act)))
        sparsity = values.get("prune", 0.0) * max_sparsity if layer.prunable else 0.0
        policy.append(LayerPolicy(layer.name, round(sparsity, 4), bits_of(values.get("w_bits", 1.0)),
                                  bits_of(values.get("a_bits", 1.0))))
    return policy


# ------------------------------------------------------------------------------ pruning
def kept_channels(width: int, sparsity: float, round_to: int = 8) -> int:
    """Channels left of ``width`` after pruning ``sparsity`` of them, rounded to a multiple of ``round_to``
    (never below one multiple; a layer narrower than ``round_to`` is not pruned)."""
    if sparsity <= 0:
        return width  # unpruned layers keep their width even when it is not a multiple
    keep = width * (1.0 - float(sparsity))
    if round_to and round_to > 1:
        if width <= round_to:
            return width
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    return int(min(width, max(1, round(keep))))


def prune(model: nn.Module, input_shape: Sequence[int], sparsity: dict[str, float], round_to: int = 8) -> nn.Module:
    """A pruned copy: each named layer loses that share of its output channels (coupled layers follow)."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    modules = dict(model.named_modules())
    ratios = {}
    for name, share in sparsity.items():
        module = modules[name]
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        keep = kept_channels(width, share, round_to)
        if keep < width:  # the exact count, so torch-pruning's own rounding never decides
            ratios[module] = (width - keep) / width - 1e-9  # torch-pruning keeps int(width x (1 - ratio))
    if not ratios:
        return model
    last = [m for m in modules.values() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    try:
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=1), pruning_ratio=0.0,
            pruning_ratio_dict=ratios, ignored_layers=[last])
        pruner.step()
    except Exception as exc:
        raise NoraError(f"torch-pruning could not prune this model: {type(exc).__name__}: {exc}") from None
    return model


# ------------------------------------------------------------------------------ fake quantisation
class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def quantise_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel quantisation to ``bits`` (straight-through gradient)."""
    levels = 2 ** (bits - 1) - 1 if bits > 1 else 1
    scale = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12) / levels
    scale = scale.view(-1, *([1] * (w.dim() - 1)))
    return _RoundSTE.apply(w / scale).clamp(-levels, levels) * scale


class FakeQuant(nn.Module):
    """A Conv2d/Linear whose weights and input are quantised on every forward."""

    def __init__(self, layer: nn.Module, w_bits: int, a_bits: int):
        super().__init__()
        self.layer, self.w_bits, self.a_bits = layer, int(w_bits), int(a_bits)
        self.register_buffer("a_scale", torch.zeros(()))
        self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool))
        self.calibrating = False

    def _quantise_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits >= FP32:
            return x
        if self.calibrating:
            self.a_scale = torch.maximum(self.a_scale, x.detach().abs().max())
            self.a_signed = self.a_signed | (x.detach().min() < 0)
            return x
        signed = bool(self.a_signed)
        levels = 2 ** (self.a_bits - 1) - 1 if signed else 2 ** self.a_bits - 1
        levels = max(levels, 1)
        scale = self.a_scale.clamp_min(1e-12) / levels
        low = -levels if signed else 0
        return _RoundSTE.apply(x / scale).clamp(low, levels) * scale

    def forward(self, x):
        x = self._quantise_input(x)
        layer = self.layer
        w = layer.weight if self.w_bits >= FP32 else quantise_weight(layer.weight, self.w_bits)
        if isinstance(layer, nn.Conv2d):
            return F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        return F.linear(x, w, layer.bias)


def quantise(model: nn.Module, bits: dict[str, tuple[int, int]], calibration: torch.Tensor) -> nn.Module:
    """Wrap the named layers in ``FakeQuant`` (in place) and calibrate the input scales on ``calibration``."""
    wrapped = []
    for name, (w_bits, a_bits) in bits.items():
        if w_bits >= FP32 and a_bits >= FP32:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fq = FakeQuant(getattr(parent, attr), w_bits, a_bits)
        setattr(parent, attr, fq)
        wrapped.append(fq)
    if wrapped:
        for fq in wrapped:
            fq.calibrating = True
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(calibration)
        model.train(was_training)
        for fq in wrapped:
            fq.calibrating = False
    return model


def apply_policy(model: nn.Module, input_shape: Sequence[int], policy: Sequence[LayerPolicy],
                 calibration: torch.Tensor, round_to: int = 8) -> tuple[nn.Module, nn.Module]:
    """(pruned float model, pruned + fake-quantised model); the first gives the shapes for latency."""
    pruned = prune(model, input_shape, {p.name: p.sparsity for p in policy}, round_to)
    compressed = quantise(copy.deepcopy(pruned), {p.name: (p.w_bits, p.a_bits) for p in policy}, calibration)
    return pruned, compressed.eval()
