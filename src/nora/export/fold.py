"""Fold, at export, what flows cannot take: fold-aware conv + BatchNorm pairs into plain quantised
convs (``fold_batch_norms``), and a global average pool into the dense layer after it.

``fc(flatten(mean_hw(x)))`` equals ``fc'(flatten(x))`` with ``W'[o, c*HW + p] = W[o, c] / HW``. The
folded layer reads the quantised activations directly, so an FPGA flow computes it in integers;
for an ``HW`` that is a power of two the weight quantiser (statistics of max |w|) gives scale/HW and
the very same integer weights, so the quantised function is unchanged (other ``HW``: the weights are
requantised on a finer grid; the export warns). Found by call order in one forward pass: a pool with
a 1 x 1 output, then a Flatten, then a Linear (float or Brevitas).
"""

from __future__ import annotations

import copy
import sys
import warnings

import torch
from torch import nn

from nora.export.flows import FlowWarning
from nora.quant.inspect import is_quant_layer

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool2d, nn.AvgPool1d)


def layer_calls(model: nn.Module, example: torch.Tensor) -> list[tuple[str, nn.Module, tuple, tuple]]:
    """(name, module, input shape, output shape) of every leaf-level call, in order (Brevitas layers
    count as leaves: their children are quantiser internals)."""
    calls: list[tuple[str, nn.Module, tuple, tuple]] = []
    handles = []

    def leaves(prefix: str, module: nn.Module):
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if is_quant_layer(child) or not list(child.children()):
                yield path, child
            else:
                yield from leaves(path, child)

    for name, module in leaves("", model):
        def hook(mod, args, output, name=name):
            if args and isinstance(args[0], torch.Tensor) and isinstance(output, torch.Tensor):
                calls.append((name, mod, tuple(args[0].shape), tuple(output.shape)))
        handles.append(module.register_forward_hook(hook))
    forward_observed(model, example, handles)
    return calls


def forward_observed(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """One gradient-free forward of ``example`` with observing hooks, removed afterwards."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _widened(fc: nn.Linear, positions: int) -> nn.Linear:
    """``fc`` over ``positions`` copies of each input, weights divided by ``positions``; a Brevitas
    layer is rebuilt with the same weight quantiser, whose statistics then track the new weight."""
    weight = fc.weight.detach().repeat_interleave(positions, dim=1) / positions
    injector = getattr(getattr(fc, "weight_quant", None), "quant_injector", None)
    options = {"weight_quant": injector} if injector is not None else {}
    wide = type(fc)(fc.in_features * positions, fc.out_features, bias=fc.bias is not None, **options)
    with torch.no_grad():
        wide.weight.copy_(weight)
        if fc.bias is not None:
            wide.bias.copy_(fc.bias)
    return wide.eval()


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """``model`` with every fold-aware conv (``FoldedQuantConv2d``, fpga preset) written as the plain
    quantised conv it equals in evaluation: folded weights and bias under the same quantisers (so the
    same integers), its BatchNorm an Identity. Changed in place (pass a copy)."""
    if "brevitas.nn" not in sys.modules:  # no fold-aware layer exists before Brevitas is imported
        return model
    from brevitas.nn import QuantConv2d

    from nora.quant.layers import FoldedQuantConv2d

    for name, conv in [(n, m) for n, m in model.named_modules() if isinstance(m, FoldedQuantConv2d)]:
        norm = next(n for n, m in model.named_modules() if m is conv.norm)
        plain = QuantConv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=True, weight_quant=conv.weight_quant.quant_injector,
            bias_quant=conv.bias_quant.quant_injector)
        with torch.no_grad():
            weight, bias = conv.folded_parameters()
            plain.weight.copy_(weight)
            plain.bias.copy_(bias)
        _set(model, name, plain.to(weight.device).train(conv.training))
        _set(model, norm, nn.Identity())
    return model


def fold_global_pools(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` (eval) with every global-pool -> Flatten -> Linear folded; the pool names."""
    model = copy.deepcopy(model).eval()
    calls = layer_calls(model, example)
    folded = []
    for first, second, third in zip(calls, calls[1:], calls[2:]):
        (pool_name, pool, pool_in, pool_out), (_, flatten, _, _), (fc_name, fc, _, _) = first, second, third
        if not (isinstance(pool, _POOLS) and all(d == 1 for d in pool_out[2:]) and isinstance(flatten, nn.Flatten)
                and isinstance(fc, nn.Linear) and fc.in_features == pool_out[1]):
            continue
        positions = 1
        for size in pool_in[2:]:
            positions *= size
        if positions & (positions - 1):
            warnings.warn(f"folding the global pool '{pool_name}' into '{fc_name}': {positions} positions is not a "
                          "power of two, so the folded weights are requantised (results differ slightly)",
                          FlowWarning, stacklevel=2)
        wide = _widened(fc, positions)
        _set(model, pool_name, nn.Identity())
        _set(model, fc_name, wide)
        folded.append(pool_name)
    return model, folded
