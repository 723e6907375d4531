"""Walking Noise (methods.md section 5): accuracy with noise at one site at a time, and mu per site.

Every evaluation goes through the measurement engine, so a walk's point equals ``nora eval`` with
noise at that site and sigma. The *naive* walk runs the full network for every (site, sigma,
repeat); the *fast* walk lets the engine use its split backend (clean prefix cached at the site,
suffix only, for chain models; sites inside non-chain blocks fall back to the full forward and say
so) and, when only mu is wanted, ``search_midpoint`` brackets and bisects with early-stopped
measurements instead of measuring a dense grid. On a chain model both walks see the same draws and
give the same numbers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from nora.analysis.curves import chance_level, check_grid, check_sigma_range
from nora.analysis.midpoint import Midpoint, midpoint, search_midpoint
from nora.errors import NoraError
from nora.measure import FULL_FORWARD, SPLIT, Engine, Measurement, check_repeats
from nora.sim.sites import Site, select_sites
from nora.noise.models import NoiseModel
from nora.sim.spec import NoiseSpec, as_spec

__all__ = ["FULL_FORWARD", "SPLIT", "SiteWalk", "WalkResult", "naive_walk", "walk"]


@dataclasses.dataclass
class SiteWalk:
    """One site's result: how it was evaluated, what was measured, its midpoint."""

    site: Site
    path: str
    measurements: list[Measurement]
    midpoint: Midpoint
    seconds: float
    cost: dict[str, Any] | None = None

    def rows(self, confidence: float = 0.95) -> list[dict[str, Any]]:
        return [m.row(confidence) for m in sorted(self.measurements, key=lambda m: m.sigma)]

    def to_dict(self, confidence: float = 0.95) -> dict[str, Any]:
        return {"site": self.site.to_dict(), "path": self.path, "midpoint": self.midpoint.to_dict(),
                "evaluations": len(self.measurements), "seconds": self.seconds, "cost": self.cost,
                "rows": self.rows(confidence)}


@dataclasses.dataclass
class WalkResult:
    mode: str
    noise: dict[str, Any]
    clean: float
    chance: float
    seed: Any
    repeats: int
    sites: list[SiteWalk]
    seconds: float
    chain: bool
    measurement: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self, confidence: float = 0.95) -> dict[str, Any]:
        return {"mode": self.mode, "noise": self.noise, "clean_accuracy": self.clean, "chance": self.chance,
                "seed": self.seed, "repeats": self.repeats, "seconds": self.seconds, "chain_model": self.chain,
                "measurement": self.measurement, "sites": [s.to_dict(confidence) for s in self.sites]}


def walk(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: NoiseSpec | NoiseModel,
    *,
    num_classes: int,
    sites: Any = None,
    sigmas: Sequence[float] | None = None,
    sigma_range: tuple[float, float] | None = None,
    repeats: int = 5,
    seed: Any = 0,
    site_repeats: int = 1,
    split: bool = True,
    progress: Callable[[SiteWalk, int, int], None] | None = None,
    **engine_options: Any,
) -> WalkResult:
    """Noise at one site at a time: a dense grid (``sigmas``) or only mu (``sigma_range``, adaptive).

    ``spec`` (or a bare noise model) gives the noise model, its per-site repeats (``site_repeats``
    sets one number for every site), the site policy and calibration; its own site selection is
    replaced by each walked site in turn. ``split=False`` is the naive walk.
    """
    if (sigmas is None) == (sigma_range is None):
        raise NoraError("give either a sigma grid (dense walk) or a sigma range (adaptive search for mu)")
    spec = as_spec(spec, **({"repeats": site_repeats} if site_repeats != 1 else {}))
    if spec.activation is None or spec.sigmas is not None:
        raise NoraError("a walk moves one activation noise model through the sites; give a noise kind, not a sigma map")
    check_repeats(repeats)
    grid = check_grid(sigmas) if sigmas is not None else None
    lo_hi = check_sigma_range(*sigma_range) if sigma_range is not None else None
    chance = chance_level(num_classes)
    started = time.perf_counter()
    with Engine(model, x, y, spec.at_sites(None), seed=seed, repeats=repeats, split=split,
                **engine_options) as engine:
        chosen = select_sites(engine.sites, sites)
        results = []
        for index in chosen:
            t0 = time.perf_counter()

            def measure(levels, threshold, index=index):
                return engine.accuracy(levels, sites=[index], threshold=threshold)

            if grid is not None:
                measured = measure(grid, None)
                mid = midpoint(grid, [m.mean for m in measured], engine.clean, chance)
            else:
                mid, measured = search_midpoint(measure, *lo_hi, engine.clean, chance)
            path = measured[0].path if measured else FULL_FORWARD
            result = SiteWalk(engine.sites[index], path, measured, mid, time.perf_counter() - t0,
                              engine.cost(spec.at_sites([index])))
            results.append(result)
            if progress is not None:
                progress(result, len(results), len(chosen))
        chain = engine.chain() is not None if split else False
        description = engine.describe()
    mode = "naive" if not split else ("grid" if grid is not None else "adaptive")
    return WalkResult(mode, spec.to_dict(), description["clean_accuracy"], chance, description["seed"], repeats,
                      results, time.perf_counter() - started, chain, description)


def naive_walk(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: NoiseSpec | NoiseModel, sigmas: Sequence[float],
               **options: Any) -> WalkResult:
    """The reference walk: the full forward for every (site, sigma, repeat), on a dense grid."""
    return walk(model, x, y, spec, sigmas=sigmas, split=False, **options)
