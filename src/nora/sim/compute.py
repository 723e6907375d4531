"""Replace the whole computation of chosen layers, not only perturb their outputs.

An analog multiply-accumulate (quantised inputs, chunked accumulation with saturation, noise inside
the sum) cannot be expressed as noise on a clean output. A ``ComputeModel`` receives the layer and
its input and returns the output; ``override_compute`` installs it on the selected layers by setting
an instance-level ``forward``, so hooks (and therefore noise sites) keep working around it.
"""

from __future__ import annotations

import types
from typing import Any, Iterable, Protocol

import torch
from torch import nn

from nora.errors import NoraError


class ComputeModel(Protocol):
    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor: ...


class ComputeOverride:
    """Handle for installed overrides; ``restore()`` or a ``with`` block puts the original back."""

    def __init__(self, model: nn.Module, compute: ComputeModel, layers: Iterable[str],
                 types_: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)):
        named = dict(model.named_modules())
        chosen = list(layers)
        missing = [n for n in chosen if n not in named]
        if missing:
            raise NoraError(f"unknown layer(s) {', '.join(missing)}")
        wrong = [n for n in chosen if not isinstance(named[n], types_)]
        if wrong:
            raise NoraError(f"layer(s) {', '.join(wrong)} are not of a supported type ({', '.join(t.__name__ for t in types_)})")
        self.modules = {n: named[n] for n in chosen}
        for module in self.modules.values():
            if "forward" in module.__dict__:
                raise NoraError(f"layer {type(module).__name__} already has its computation replaced")
            module.forward = types.MethodType(lambda self, x, _c=compute: _c(self, x), module)

    def restore(self) -> None:
        for module in self.modules.values():
            module.__dict__.pop("forward", None)

    def __enter__(self) -> "ComputeOverride":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def override_compute(model: nn.Module, compute: ComputeModel, layers: Iterable[str]) -> ComputeOverride:
    return ComputeOverride(model, compute, layers)
