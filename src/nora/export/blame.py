"""Find the layer an exporter chokes on, so the error names it instead of an operator deep in a trace.

Exporters fail with messages about aten operators or graph nodes. To name the layer, every module's
input is recorded in one clean forward pass, and the exporter is retried on sub-modules alone,
descending into the first child that fails, until no child fails: that module is the culprit
(its own ``forward`` code, if its children export fine). Brevitas layers count as one layer: their
children are quantiser internals. This costs a few small exports and only
runs after a failure.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from nora.export.fold import forward_observed
from nora.quant.inspect import is_quant_layer

Exporter = Callable[[nn.Module, torch.Tensor], bytes]


def _record_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """First-call input of every sub-module whose input is one batch tensor, in call order (quantiser
    internals, called on scalars and weights, are left out)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, args, name=name):
            value = args[0] if len(args) == 1 else None
            if name not in seen and isinstance(value, torch.Tensor) and value.ndim > 0 and len(value) == len(example):
                seen[name] = value.detach().clone()

        handles.append(module.register_forward_pre_hook(hook))
    forward_observed(model, example, handles)
    return seen


def _fails(export: Exporter, module: nn.Module, example: torch.Tensor) -> bool:
    try:
        export(copy.deepcopy(module).eval(), example)
    except Exception:  # noqa: BLE001  any exporter failure counts: we only want to know where
        return True
    return False


def failing_layer(model: nn.Module, example: torch.Tensor, export: Exporter) -> tuple[str, str]:
    """``(name, type)`` of the innermost module whose export fails; ``("", model type)`` when only
    the model's own forward code is to blame."""
    model = copy.deepcopy(model).eval()
    inputs = _record_inputs(model, example)
    modules = dict(model.named_modules())
    culprit = ""
    while True:
        prefix = f"{culprit}." if culprit else ""
        if culprit and is_quant_layer(modules[culprit]):
            return culprit, type(modules[culprit]).__name__
        children = [
            f"{prefix}{child}" for child, _ in modules[culprit].named_children() if f"{prefix}{child}" in inputs
        ]
        children.sort(key=list(inputs).index)
        failing = next((name for name in children if _fails(export, modules[name], inputs[name])), None)
        if failing is None:
            return culprit, type(modules[culprit]).__name__
        culprit = failing
