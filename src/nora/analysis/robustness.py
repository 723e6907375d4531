"""Robustness under a distribution of inference sigmas, and the sigma_train x sigma_inf matrix.

Robustness (methods.md section 6, decision): the mean test accuracy over the inference-sigma
distribution divided by the model's clean accuracy, ``E_sigma[acc(sigma)] / acc(0)``. It is
relative, so it is always reported beside the raw accuracies it comes from.

The expectation is a deterministic quadrature: writing ``E[acc(sigma)] = integral_0^1 acc(F^-1(u)) du``
(F the distribution's CDF), it is the midpoint rule in u with ``n`` equal-probability nodes
``sigma_i = F^-1((i + 0.5) / n)``, weights ``1/n`` (nodes that coincide are merged). Accuracy is a
smooth, monotone function of sigma, for which 16 nodes are plenty; a ``grid`` distribution uses its
own values with equal weights.

Distributions (``parse_sigma_dist``):

- ``lognormal:m,s`` -- sigma is log-normal with MEAN ``m`` and STANDARD DEVIATION ``s`` of sigma itself
  (not of log sigma): log sigma ~ N(mu, v) with v = ln(1 + s^2/m^2), mu = ln m - v/2;
- ``normal:m,s`` -- sigma = max(0, N(m, s^2)): mass below zero sits at sigma = 0 (a clean inference);
- ``uniform:a,b`` -- uniform on [a, b], 0 <= a <= b;
- ``grid:s1,s2,...`` -- the listed sigmas, equally weighted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from nora.errors import NoraError
from nora.measure import Engine
from nora.stats import summarize

DEFAULT_NODES = 16
_FORMS = {"lognormal": "lognormal:m,s", "normal": "normal:m,s", "uniform": "uniform:a,b", "grid": "grid:s1,s2,..."}


@dataclasses.dataclass(frozen=True)
class SigmaDistribution:
    kind: str
    params: tuple[float, ...]

    def quantile(self, u: np.ndarray | float) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        if self.kind == "lognormal":
            m, s = self.params
            if s == 0:
                return np.full_like(u, m)
            v = math.log1p((s / m) ** 2)
            return stats.lognorm.ppf(u, math.sqrt(v), scale=m / math.sqrt(1 + (s / m) ** 2))
        if self.kind == "normal":
            m, s = self.params
            return np.maximum(0.0, m + s * stats.norm.ppf(u)) if s > 0 else np.full_like(u, max(0.0, m))
        if self.kind == "uniform":
            a, b = self.params
            return a + (b - a) * u
        grid = np.sort(np.asarray(self.params))
        return grid[np.minimum((u * len(grid)).astype(int), len(grid) - 1)]

    def nodes(self, n: int = DEFAULT_NODES) -> tuple[np.ndarray, np.ndarray]:
        """Quadrature nodes (distinct sigmas, increasing) and weights summing to one."""
        if self.kind == "grid":
            raw = np.asarray(self.params, dtype=float)
        else:
            if n < 1:
                raise NoraError(f"the quadrature needs at least one node, got {n}")
            raw = self.quantile((np.arange(n) + 0.5) / n)
        sigmas, counts = np.unique(np.round(raw, 12), return_counts=True)
        return sigmas, counts / counts.sum()

    def mean(self) -> float:
        if self.kind == "lognormal":
            return self.params[0]
        if self.kind == "normal":
            m, s = self.params
            if s == 0:
                return max(0.0, m)
            a = m / s
            return m * stats.norm.cdf(a) + s * stats.norm.pdf(a)
        if self.kind == "uniform":
            return 0.5 * (self.params[0] + self.params[1])
        return float(np.mean(self.params))

    def describe(self) -> str:
        if self.kind == "lognormal":
            return f"lognormal sigma with mean {self.params[0]:g} and std {self.params[1]:g}"
        if self.kind == "normal":
            return f"normal sigma N({self.params[0]:g}, {self.params[1]:g}^2) clipped at 0"
        if self.kind == "uniform":
            return f"uniform sigma on [{self.params[0]:g}, {self.params[1]:g}]"
        return f"grid of {len(self.params)} sigmas {', '.join(f'{p:g}' for p in self.params)}"

    def default_grid(self, points: int = 9) -> list[float]:
        """Inference sigmas for a matrix or curve: log-spaced from well below to well above the bulk."""
        if self.kind == "grid":
            return sorted(set(self.params))
        lo, hi = (float(v) for v in self.quantile(np.array([0.01, 0.99])))
        hi = max(hi, 1e-6)
        lo = lo / 3 if lo > 0 else hi / 30
        return sorted({float(f"{v:.2g}") for v in np.geomspace(lo, hi * 2, points)})


def parse_sigma_dist(text: str) -> SigmaDistribution:
    """``lognormal:m,s`` | ``normal:m,s`` | ``uniform:a,b`` | ``grid:s1,s2,...`` (see the module doc)."""
    kind, sep, rest = str(text).partition(":")
    kind = kind.strip().lower()
    if kind not in _FORMS or not sep:
        raise NoraError(f"bad sigma distribution {text!r}; use one of {', '.join(_FORMS.values())}")
    try:
        params = tuple(float(p) for p in rest.split(","))
    except ValueError:
        raise NoraError(f"bad sigma distribution {text!r}: parameters must be numbers, as in {_FORMS[kind]}") from None
    if not all(math.isfinite(p) for p in params):
        raise NoraError(f"bad sigma distribution {text!r}: parameters must be finite")
    if kind != "grid" and len(params) != 2:
        raise NoraError(f"bad sigma distribution {text!r}: {kind} takes two parameters, as in {_FORMS[kind]}")
    if kind == "lognormal" and not (params[0] > 0 and params[1] >= 0):
        raise NoraError(f"bad sigma distribution {text!r}: lognormal needs mean m > 0 and std s >= 0")
    if kind == "normal" and params[1] < 0:
        raise NoraError(f"bad sigma distribution {text!r}: normal needs std s >= 0")
    if kind == "uniform" and not 0 <= params[0] <= params[1]:
        raise NoraError(f"bad sigma distribution {text!r}: uniform needs 0 <= a <= b")
    if kind == "grid" and any(p < 0 for p in params):
        raise NoraError(f"bad sigma distribution {text!r}: grid sigmas must be >= 0")
    return SigmaDistribution(kind, params)


def robustness_from_rows(rows: Sequence[dict[str, Any]], weights: Sequence[float], clean: float,
                         confidence: float = 0.95) -> dict[str, Any]:
    """Weighted mean accuracy and robustness, with a CI over the repeats (repeat r = seed + r at every node)."""
    if clean <= 0:
        raise NoraError("robustness is undefined for a model whose clean accuracy is 0")
    repeats = min(len(r["values"]) for r in rows)
    per_repeat = [sum(w * r["values"][k] for w, r in zip(weights, rows)) for k in range(repeats)]
    acc = summarize(per_repeat, confidence)
    rob = summarize([a / clean for a in per_repeat], confidence)
    return {
        "clean_accuracy": clean,
        "mean_accuracy": acc["mean"],
        "mean_accuracy_ci": [acc["ci_low"], acc["ci_high"]],
        "robustness": rob["mean"],
        "robustness_ci": [rob["ci_low"], rob["ci_high"]],
        "repeats": repeats,
    }


def evaluate_robustness(engine: Engine, distribution: SigmaDistribution, *, nodes: int = DEFAULT_NODES,
                        confidence: float = 0.95) -> dict[str, Any]:
    """Clean accuracy, accuracy at each quadrature node, their weighted mean and the robustness."""
    sigmas, weights = distribution.nodes(nodes)
    rows = engine.summary(sigmas.tolist(), confidence=confidence)
    for row, w in zip(rows, weights):
        row["weight"] = float(w)
    return {**robustness_from_rows(rows, weights, engine.clean, confidence), "distribution": distribution.describe(),
            "nodes": rows}


def accuracy_matrix(curves: Sequence[Sequence[dict[str, Any]]]) -> list[list[float]]:
    """Mean accuracies of per-model curves over a common sigma grid, one row per model (the heat map)."""
    grids = {tuple(r["sigma"] for r in rows) for rows in curves}
    if len(grids) > 1:
        raise NoraError("every model of an accuracy matrix must be evaluated on the same sigma grid")
    return [[r["mean"] for r in rows] for rows in curves]
