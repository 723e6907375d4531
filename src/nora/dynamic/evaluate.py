"""Accuracy along a trajectory: the model meets sigma(t) at each time, with optional jitter.

Each time point is one measurement of the engine at the nominal sigma(t); jitter factors are drawn
per repeat from that repeat's seed-tree node, afresh at every time point, so differences between
time points come from sigma(t), not from different noise draws (common random numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nora.dynamic.trajectory import Trajectory
from nora.measure import Engine


def evaluate_trajectory(engine: Engine, trajectory: Trajectory, *, confidence: float = 0.95,
                        progress: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One row per time: time, nominal sigma, accuracy mean/std/CI over the repeats, and the values."""
    jitter = trajectory.jitter
    scale = None if jitter is None else (lambda generator, batch: jitter.factors(batch, generator))
    rows = []
    for t, sigma in zip(trajectory.times.tolist(), trajectory.sigmas.tolist()):
        (row,) = engine.summary([sigma], confidence=confidence, sample_scale=scale)
        rows.append({"time": t, **row})
        if progress is not None:
            progress()
    return rows
