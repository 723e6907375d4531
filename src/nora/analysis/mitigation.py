"""Tailored repeated execution under a cost budget, from a walk's per-site midpoint noise levels.

Repeating site i R_i times divides its effective sigma by sqrt(R_i) (methods.md section 4) and costs
``(R_i - 1) c_i`` extra analog evaluations per sample (``c_i``: elements at the site). A walk says
how much noise each site tolerates: mu_i. (decision) Sites are treated as independent noise sources
whose harm adds in tolerance units, ``sum_i (sigma / (sqrt(R_i) mu_i))^2``; this separable convex
objective is minimised over integer R_i by greedily buying the repetition with the largest reduction
per unit cost that still fits the budget. The comparison puts the tailored allocation beside uniform
repetition of the same extra cost and measures both on real data.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.measure import Engine
from nora.sim.spec import as_spec


def _check_mu(mu: Sequence[float | None]) -> list[float]:
    out = []
    for i, m in enumerate(mu):
        if m is None or (isinstance(m, float) and math.isinf(m)):
            out.append(math.inf)  # the site never failed in the walk: it needs no repetition
        elif isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise NoraError(f"midpoint mu of site {i} must be a number > 0 (or null), got {m!r}")
        else:
            out.append(float(m))
    if not out:
        raise NoraError("no per-site midpoints given")
    return out


def extra_cost(repeats: Sequence[int], costs: Sequence[float]) -> float:
    """Extra analog evaluations per sample of a repetition policy over single execution."""
    return float(sum((r - 1) * c for r, c in zip(repeats, costs)))


def tailored_repeats(mu: Sequence[float | None], budget: float, costs: Sequence[float] | None = None,
                     max_repeats: int = 256) -> list[int]:
    """Per-site repetitions minimising ``sum_i 1 / (R_i mu_i^2)`` with extra cost at most ``budget``."""
    mu = _check_mu(mu)
    costs = [1.0] * len(mu) if costs is None else [float(c) for c in costs]
    if len(costs) != len(mu) or any(not c > 0 for c in costs):
        raise NoraError("costs must give one number > 0 per site")
    if not budget >= 0:
        raise NoraError(f"the budget of extra evaluations must be >= 0, got {budget!r}")
    weights = [0.0 if math.isinf(m) else 1.0 / m ** 2 for m in mu]
    repeats = [1] * len(mu)
    left = float(budget)
    while True:
        best, best_gain = None, 0.0
        for i, (w, c) in enumerate(zip(weights, costs)):
            r = repeats[i]
            if w == 0 or c > left + 1e-9 or r >= max_repeats:
                continue
            gain = w * (1.0 / r - 1.0 / (r + 1)) / c
            if gain > best_gain:
                best, best_gain = i, gain
        if best is None:
            return repeats
        repeats[best] += 1
        left -= costs[best]


def compare_at_equal_cost(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise, mu: Sequence[float | None],
                          costs: Sequence[float], uniform: int, *, seed: int = 0, realisations: int = 5) -> dict[str, Any]:
    """Accuracy under ``noise`` at every site with uniform R and with the tailored policy of the same extra cost.

    Every policy is measured by the engine on the same ``realisations`` noise draws (repeat seeds of
    ``seed``), so the policies differ only in their repeats; the result holds per-realisation accuracies.
    """
    if isinstance(uniform, bool) or not isinstance(uniform, int) or uniform < 1:
        raise NoraError(f"uniform repeats must be an integer >= 1, got {uniform!r}")
    n = len(costs)
    flat = [uniform] * n
    budget = extra_cost(flat, costs)
    tailored = tailored_repeats(mu, budget, costs)
    out: dict[str, Any] = {"budget": budget, "policies": {}}
    with Engine(model, x, y, as_spec(noise), seed=seed, repeats=realisations) as engine:
        base = engine.spec
        for name, repeats in (("single", [1] * n), ("uniform", flat), ("tailored", tailored)):
            engine.spec = base.replace(repeats=tuple(repeats))
            (measured,) = engine.accuracy()
            out["policies"][name] = {"repeats": list(repeats), "extra_cost": extra_cost(repeats, costs),
                                     "accuracy": measured.values, "mean": measured.mean}
        engine.spec = base
    return out
