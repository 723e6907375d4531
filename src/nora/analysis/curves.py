"""Accuracy-vs-sigma curves on a log grid and the (amplitude, ratio) heat map of combined noise.

Every number comes from the measurement engine (``nora.measure.Engine``): the same repeat seeds,
calibration and chunks as ``nora eval`` and the walks, so a curve point equals the eval result at
that sigma. Every sigma restarts the repeats' streams (common random numbers), so a curve is smooth
in sigma and differences between sigmas are not noise-on-noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from nora.analysis.midpoint import Midpoint, midpoint
from nora.errors import NoraError
from nora.measure import Engine
from nora.noise.models import GaussianCombined, NoiseModel
from nora.sim.spec import NoiseSpec, as_spec
from nora.stats import summarize_accuracy


# ------------------------------------------------------------------------------ grids
def log_grid(lo: float, hi: float, per_decade: int | float) -> list[float]:
    """Sigmas from ``lo`` to ``hi`` (both included) with ``per_decade`` points per decade."""
    lo, hi = check_sigma_range(lo, hi)
    if isinstance(per_decade, bool) or not isinstance(per_decade, (int, float)) or not per_decade >= 1:
        raise NoraError(f"points per decade must be a number >= 1, got {per_decade!r}")
    decades = math.log10(hi) - math.log10(lo)
    steps = max(1, round(decades * per_decade))
    grid = np.logspace(math.log10(lo), math.log10(hi), steps + 1)
    grid[0], grid[-1] = lo, hi
    return [float(f"{s:.6g}") for s in grid]


def check_sigma_range(lo: Any, hi: Any) -> tuple[float, float]:
    """A sigma range for a log grid: two finite numbers with 0 < low < high."""
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise NoraError(f"the sigma range must be two numbers, got {lo!r} .. {hi!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0:
        raise NoraError(f"the sigma range must be finite and start above 0 (log scale), got {lo:g} .. {hi:g}")
    if not lo < hi:
        raise NoraError(f"the sigma range is empty or not increasing: {lo:g} .. {hi:g} (need low < high)")
    return lo, hi


def check_grid(sigmas: Sequence[float]) -> list[float]:
    """A non-empty, strictly increasing list of sigmas > 0."""
    values = [float(s) for s in sigmas]
    if not values:
        raise NoraError("the sigma grid is empty")
    if any(not math.isfinite(s) or s <= 0 for s in values):
        raise NoraError("every sigma of a grid must be a finite number > 0 (log scale)")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise NoraError(f"the sigma grid must be strictly increasing, got {values}")
    return values


def chance_level(num_classes: int) -> float:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise NoraError(f"chance level needs a number of classes >= 2, got {num_classes!r}")
    return 1.0 / num_classes


# ------------------------------------------------------------------------------ curves
@dataclasses.dataclass
class Curve:
    """Accuracy vs sigma for one noise placement, with clean accuracy, chance and the midpoint."""

    label: str
    rows: list[dict[str, Any]]
    clean: float
    chance: float
    midpoint: Midpoint

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "clean_accuracy": self.clean, "chance": self.chance,
                "midpoint": self.midpoint.to_dict(), "rows": self.rows}


def accuracy_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: NoiseSpec | NoiseModel,
    sigmas: Sequence[float],
    *,
    num_classes: int,
    sites: Any = None,
    repeats: int = 5,
    seed: Any = 0,
    confidence: float = 0.95,
    label: str = "",
    engine: Engine | None = None,
    **engine_options: Any,
) -> Curve:
    """Accuracy at each sigma of a grid under ``spec`` (its activation level varied), R repeats each.

    ``spec`` may be a bare noise model (placed at ``sites``, all by default); with ``engine`` the
    measurement reuses that engine's data, seed and calibration.
    """
    sigmas = check_grid(sigmas)
    spec = as_spec(spec, **({"sites": sites} if sites is not None else {}))
    chance = chance_level(num_classes)
    own = engine is None
    engine = engine or Engine(model, x, y, spec, seed=seed, repeats=repeats, **engine_options)
    try:
        rows = engine.summary(sigmas, confidence=confidence)
    finally:
        if own:
            engine.close()
    mid = midpoint(sigmas, [r["mean"] for r in rows], engine.clean, chance)
    return Curve(label or spec.describe(), rows, engine.clean, chance, mid)


def combined_grid(engine: Engine, cells: Sequence[Sequence[tuple[float, float]]],
                  confidence: float = 0.95) -> list[list[dict[str, Any]]]:
    """Mean accuracy (with spread) for a matrix of (amplitude, ratio) cells of combined noise."""
    noise = engine.spec.activation
    if not isinstance(noise, GaussianCombined):
        raise NoraError("a (amplitude, ratio) heat map needs combined noise (--noise combined)")
    base = engine.spec
    matrix = []
    try:
        for row in cells:
            out = []
            for amplitude, ratio in row:
                engine.spec = base.replace(activation=dataclasses.replace(noise, ratio=ratio))
                (m,) = engine.accuracy([amplitude])
                out.append({"amplitude": amplitude, "ratio": ratio, **summarize_accuracy(m.values, confidence)})
            matrix.append(out)
    finally:
        engine.spec = base
    return matrix


def mul_add_cells(sigma_mul: Sequence[float], sigma_add: Sequence[float]) -> list[list[tuple[float, float]]]:
    """(amplitude, ratio) for each (sigma_add row, sigma_mul column): A = s_mul + s_add, r = s_add / A."""
    cells = []
    for s_add in sigma_add:
        row = []
        for s_mul in sigma_mul:
            amplitude = s_mul + s_add
            row.append((amplitude, s_add / amplitude if amplitude > 0 else 0.5))
        cells.append(row)
    return cells
