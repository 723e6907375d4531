"""Weight noise (programming/read noise of stored weights) and weight clamping.

Weight noise is a torch parametrization of ``weight``: every access draws a fresh perturbation, so
it works with any optimizer and any layer that reads ``self.weight``. Clamping runs after each
optimizer step (an optimizer step post-hook): the control experiment showing that weights grow to
beat additive noise.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from nora.errors import NoraError
from nora.noise.models import NoiseModel
from nora.noise.rng import Stream
from nora.seeds import SeedTree

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _WeightPerturbation(nn.Module):
    def __init__(self, noise: NoiseModel, owner: "WeightNoise"):
        super().__init__()
        self.noise = noise
        self.owner = owner

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.owner.active(self.training):
            return weight
        factor: float | torch.Tensor = 1.0
        # A 0-d tensor factor keeps the scale on the weight's device (no host synchronisation).
        if self.noise.relative == "maxabs":
            factor = weight.detach().abs().max()
        elif self.noise.relative == "std":
            factor = weight.detach().std()

        def draw() -> torch.Tensor:
            return self.owner.stream.normal_(torch.empty_like(weight))

        return self.noise.perturb(weight, draw, factor, inplace=False)


class WeightNoise:
    """Fresh noise on the weights of every Linear/Conv layer at every forward pass.

    All layers draw from one stream in call order; ``reseed`` starts a new reproducible stream
    (the measurement engine does so per repeat, the trainer per epoch).
    """

    def __init__(self, model: nn.Module, noise: NoiseModel, *, layers: Iterable[str] | None = None,
                 seed: SeedTree | int | None = None, when: str = "always"):
        if when not in ("always", "train", "eval"):
            raise NoraError(f"when must be 'always', 'train' or 'eval', got {when!r}")
        self.model = model
        self.noise = noise
        self.when = when
        self.enabled = True
        self.stream = Stream(seed)
        named = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
        if layers is not None:
            wanted = list(layers)
            missing = [n for n in wanted if n not in named]
            if missing:
                raise NoraError(f"unknown layer(s) {', '.join(missing)}; weight layers are: {', '.join(named)}")
            named = {n: named[n] for n in wanted}
        if not named:
            raise NoraError("the model has no Linear or Conv layer to put weight noise on")
        self.layers = named
        for module in named.values():
            parametrize.register_parametrization(module, "weight", _WeightPerturbation(noise, self))

    def reseed(self, seed: SeedTree | int) -> None:
        self.stream = Stream(seed)

    def active(self, training: bool) -> bool:
        if not self.enabled:
            return False
        return self.when == "always" or training == (self.when == "train")

    def detach(self) -> nn.Module:
        """Remove the parametrizations and keep the clean stored weights."""
        for module in self.layers.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        return self.model

    def __enter__(self) -> "WeightNoise":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


def clamp_weights_(model: nn.Module, low: float = -1.0, high: float = 1.0) -> None:
    """Clamp the stored weights of every Linear/Conv layer in place."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS):
                stored = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
                stored.clamp_(low, high)


def clamp_after_step(optimizer: torch.optim.Optimizer, model: nn.Module, low: float = -1.0, high: float = 1.0):
    """Register clamping as an optimizer step post-hook; returns the removable handle."""
    if not low < high:
        raise NoraError(f"weight clamp needs low < high, got [{low}, {high}]")
    return optimizer.register_step_post_hook(lambda *_: clamp_weights_(model, low, high))
