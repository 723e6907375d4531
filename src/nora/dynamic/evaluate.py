"""Accuracy along a trajectory: the model meets sigma(t) at each time, with optional jitter.

At every time point the injector is re-planned at the nominal sigma (cheap, no re-attach), and each
mini-batch gets its jitter factors through ``sigma_scale``. Repeat r uses activation-noise seed
``seed + r`` and a jitter stream from (seed, r) at every time point, so differences between time
points come from sigma(t), not from different noise draws (common random numbers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nora.analysis.evaluate import accuracy
from nora.analysis.stats import summarize
from nora.dynamic.trajectory import Trajectory
from nora.errors import NoraError
from nora.noise.models import NoiseModel
from nora.sim.injector import NoiseInjector, injector_of
from nora.train.schedules import batch_generator


@torch.no_grad()
def _jittered_accuracy(model, loader, injector: NoiseInjector, trajectory: Trajectory, generator) -> float:
    correct = total = 0
    for xb, yb in loader:
        injector.sigma_scale = trajectory.jitter.factors(len(yb), generator)
        correct += int((model(xb).argmax(dim=1) == yb).sum())
        total += int(yb.numel())
    injector.sigma_scale = 1.0
    return correct / max(total, 1)


def evaluate_trajectory(
    model: nn.Module,
    loader: Iterable,
    noise: NoiseModel,
    trajectory: Trajectory,
    *,
    confidence: float = 0.95,
    injector_options: dict[str, Any] | None = None,
    progress: Callable[[], None] | None = None,
    calibration_batches: int = 4,
) -> list[dict[str, Any]]:
    """One row per time: time, nominal sigma, accuracy mean/std/CI over the repeats, and the values."""
    if injector_of(model) is not None:
        raise NoraError("the model already has noise attached; detach it before a trajectory evaluation")
    example = next(iter(loader))[0]
    seed = trajectory.seed
    rows = []
    was_training = model.training
    model.eval()
    with NoiseInjector(model, noise, example_input=example[:2], seed=seed, when="eval", **(injector_options or {})) as injector:
        if noise.relative is not None:
            injector.calibrate((xb for _, (xb, _y) in zip(range(calibration_batches), loader)), noise.relative)
        try:
            for t, sigma in zip(trajectory.times.tolist(), trajectory.sigmas.tolist()):
                injector.set_noise(noise.with_magnitude(sigma))
                values = []
                for r in range(trajectory.repeats):
                    injector.reseed(seed + r)
                    if trajectory.jitter is None:
                        values.append(accuracy(model, loader))
                    else:
                        values.append(_jittered_accuracy(model, loader, injector, trajectory, batch_generator(seed, r)))
                    if progress is not None:
                        progress()
                rows.append({"time": t, "sigma": sigma, **summarize(values, confidence), "values": values})
        finally:
            model.train(was_training)
    return rows
