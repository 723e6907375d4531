"""Accuracy of a model, clean or under noise with repeated draws."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from nora.analysis.stats import summarize
from nora.errors import NoraError
from nora.noise.models import NoiseModel
from nora.sim.injector import NoiseInjector, injector_of


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for xb, yb in loader:
            correct += int((model(xb).argmax(dim=1) == yb).sum())
            total += int(yb.numel())
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def noisy_accuracy(
    model: nn.Module,
    loader,
    noise: NoiseModel,
    sigmas: Sequence[float],
    *,
    repeats: int = 5,
    seed: int = 0,
    confidence: float = 0.95,
    injector_options: dict[str, Any] | None = None,
    progress=None,
    calibration_batches: int = 4,
) -> list[dict[str, Any]]:
    """For each sigma: accuracy over ``repeats`` independent noise draws, with mean, std and CI.

    Repeat r of every sigma uses seed ``seed + r``, so two models evaluated with the same seed
    see the same noise stream.
    """
    if injector_of(model) is not None:
        raise NoraError("the model already has noise attached; detach it before a noisy evaluation")
    example = next(iter(loader))[0]
    rows = []
    with NoiseInjector(model, noise, example_input=example[:2], seed=seed, when="eval", **(injector_options or {})) as injector:
        if noise.relative is not None:
            injector.calibrate((xb for i, (xb, _) in zip(range(calibration_batches), loader)), noise.relative)
        for sigma in sigmas:
            injector.set_noise(noise.with_magnitude(sigma))
            values = []
            for r in range(repeats):
                injector.reseed(seed + r)
                values.append(accuracy(model, loader))
                if progress is not None:
                    progress()
            summary = summarize(values, confidence)
            # An accuracy lies in [0, 1]; a t-interval over few repeats need not.
            summary["ci_low"], summary["ci_high"] = max(0.0, summary["ci_low"]), min(1.0, summary["ci_high"])
            rows.append({"sigma": float(sigma), **summary, "values": values})
    return rows
