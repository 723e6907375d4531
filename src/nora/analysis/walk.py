"""Walking Noise (methods.md section 5): accuracy with noise at one site at a time, and mu per site.

The naive walk runs the whole network for every (site, sigma, repeat). The fast walk avoids most of
that work:

* **Prefix caching.** The layers before the noisy site are deterministic. For models whose forward
  is a chain of module calls (``nn.Sequential`` and any module that only feeds each child the
  previous child's output: mlp, lenet5, vgg11 and many user models) the model is split at site k:
  the clean activation at k is computed once per chunk of the test set (kept in memory when it fits
  ``cache_bytes``, and advanced step by step from site to site), and only the suffix runs on noisy
  copies of it. Whether a model is a chain is *checked*, with hooks and a numerical comparison, not
  assumed; sites inside modules that are not chains (a ResNet block) fall back to a full forward
  with the ``NoiseInjector``, and every result says which path it took.
* **Packed repeats and sigmas.** The R repeats (and several sigmas) of a chunk are tiled along the
  batch and go through the suffix in one call, with a per-sample sigma.
* **Adaptive search.** When only mu is wanted, ``search_midpoint`` brackets and bisects with
  early-stopped measurements instead of measuring a dense grid.

The noise is nora's own: the same ``NoiseModel.perturb`` and ``NoiseSource`` streams as the
injector. On the split path repeat r draws from ``NoiseSource(seed + r)`` chunk by chunk, exactly as
``noisy_accuracy`` with noise at one site does, so with chunks equal to its batches and no early
stopping the two walks see the same draws and agree (tests/test_walk.py checks this).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from nora.analysis.curves import (
    DEFAULT_BATCH_ELEMENTS,
    DEFAULT_CHUNK,
    InjectorEvaluator,
    Tally,
    calibration_reference,
    chance_level,
    check_grid,
    check_repeats,
    check_sigma_range,
    clean_accuracy,
    tiles_per_call,
)
from nora.analysis.midpoint import Measurement, Midpoint, midpoint, search_midpoint
from nora.errors import NoraError
from nora.noise.models import NoiseModel
from nora.noise.rng import NoiseSource
from nora.sim.injector import injector_of
from nora.sim.sites import Site, discover_sites, eligible_modules, resolve_site_types, select_sites

SPLIT = "split"
FULL_FORWARD = "full-forward"
#: Clean activations of one site over the whole test set are kept in memory up to this size.
DEFAULT_CACHE_BYTES = 1 << 30


# ------------------------------------------------------------------------------ chains
@dataclasses.dataclass
class Chain:
    """A model as a list of steps whose composition equals its forward pass.

    ``cuts[site]`` is the number of steps whose output is that site's output (0 for the input).
    Sites missing from ``cuts`` lie inside a step that is not itself a chain.
    """

    steps: list[nn.Module]
    cuts: dict[int, int]

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for step in self.steps[start:stop]:
            x = step(x)
        return x


def _flatten(module: nn.Module, x: torch.Tensor, site_types: tuple[type[nn.Module], ...]) -> list[nn.Module] | None:
    """Steps equal to ``module(x)``, or None when its forward is not a chain of its children."""
    if isinstance(module, site_types) or not any(True for _ in module.children()):
        return [module]
    calls: list[tuple[nn.Module, int, torch.Tensor, Any]] = []
    pending: list[tuple[nn.Module, int, torch.Tensor]] = []

    def before(child, args, kwargs):
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
            pending.append((child, -1, torch.empty(0)))
        else:
            pending.append((child, id(args[0]), args[0].clone()))

    def after(child, _args, _kwargs, output):
        entry = pending.pop()
        calls.append((*entry, output))

    children = {id(c): c for c in module.children()}.values()
    handles = [c.register_forward_pre_hook(before, with_kwargs=True) for c in children]
    handles += [c.register_forward_hook(after, with_kwargs=True) for c in children]
    given = x.clone()
    try:
        output = module(given)
    except Exception:  # whatever stops this forward on its own also stops treating it as a chain
        return None
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return None
    # Identity of the tensors proves the wiring: each child gets exactly the previous child's output.
    expected = id(given)
    for _child, source, _value, out in calls:
        if source != expected or not isinstance(out, torch.Tensor):
            return None
        expected = id(out)
    if id(output) != expected:
        return None
    steps: list[nn.Module] = []
    for child, _source, value, _out in calls:
        steps += _flatten(child, value, site_types) or [child]
    return steps


def split_chain(model: nn.Module, example: torch.Tensor, sites: Sequence[Site],
                site_types: Sequence[type[nn.Module]] | None = None) -> Chain | None:
    """The model as a chain of steps with each site's cut point, or None when it is not a chain.

    Checked on ``example``: the wiring with hooks, the result numerically against ``model(example)``.
    """
    types = resolve_site_types(site_types)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            steps = _flatten(model, example, types)
            if steps is None:
                return None
            chain = Chain(steps, {})
            reference = model(example.clone())
            eligible = {id(m) for _, m in eligible_modules(model, types)}
            counted: list[int] = []
            handles = [m.register_forward_hook(lambda *_: counted.append(1))
                       for _, m in eligible_modules(model, types)]
            try:
                x = example.clone()
                per_step = []
                for step in steps:
                    before = len(counted)
                    x = step(x)
                    per_step.append(len(counted) - before)
            finally:
                for handle in handles:
                    handle.remove()
            if not (isinstance(x, torch.Tensor) and x.shape == reference.shape
                    and torch.allclose(x, reference, rtol=1e-5, atol=1e-6)):
                return None
    finally:
        model.train(was_training)
    offset = 1 if sites and sites[0].module_type == "Input" else 0
    if offset:
        chain.cuts[0] = 0
    if sum(per_step) != len(sites) - offset:
        return None
    index = offset
    for position, (step, count) in enumerate(zip(steps, per_step)):
        if count == 1 and id(step) in eligible:
            chain.cuts[index] = position + 1
        index += count
    return chain


# ------------------------------------------------------------------------------ split evaluation
class ActivationCache:
    """Clean activations at a cut, chunk by chunk; kept in memory when they fit, else recomputed."""

    def __init__(self, chain: Chain, x: torch.Tensor, chunk_size: int, cache_bytes: int):
        self.chain, self.x, self.chunk_size, self.cache_bytes = chain, x, chunk_size, cache_bytes
        self.cut = 0
        self.kept: list[torch.Tensor] | None = None

    def move_to(self, cut: int, numel: int) -> None:
        """Prepare the activations after ``cut`` steps (advancing the kept ones when possible)."""
        fits = len(self.x) * numel * self.x.element_size() <= self.cache_bytes
        with torch.no_grad():
            if fits and self.kept is not None and cut >= self.cut:
                self.kept = [self.chain.run(a, self.cut, cut) for a in self.kept]
            elif fits:
                self.kept = [self._compute(start, cut) for start in range(0, len(self.x), self.chunk_size)]
            else:
                self.kept = None
        self.cut = cut

    def _compute(self, start: int, cut: int) -> torch.Tensor:
        return self.chain.run(self.x[start:start + self.chunk_size].clone(), 0, cut)

    def chunks(self) -> Iterator[torch.Tensor]:
        if self.kept is not None:
            yield from self.kept
            return
        with torch.no_grad():
            for start in range(0, len(self.x), self.chunk_size):
                yield self._compute(start, self.cut)


class SplitEvaluator:
    """Accuracy with noise at one site of a chain: noisy copies of the cached activation, suffix only."""

    path = SPLIT

    def __init__(self, chain: Chain, cache: ActivationCache, site: Site, y: torch.Tensor, *, repeats: int,
                 seed: int, peak_numel: int, max_batch_elements: int, factor: float = 1.0, site_repeats: int = 1):
        self.chain, self.cache, self.site, self.y = chain, cache, site, y
        self.repeats, self.seed, self.factor, self.site_repeats = repeats, seed, factor, site_repeats
        self.peak_numel, self.max_batch_elements = peak_numel, max_batch_elements
        self.cut = chain.cuts[site.index]

    @torch.no_grad()
    def measure(self, noise: NoiseModel, sigmas: Sequence[float], threshold: float | None = None) -> list[Measurement]:
        tally = Tally(sigmas, self.repeats)
        sources = [NoiseSource(self.seed + r) for r in range(self.repeats)]
        start = 0
        for clean in self.cache.chunks():
            batch = clean.shape[0]
            labels = self.y[start:start + batch]
            start += batch
            draws = self._draws(sources, clean, noise.draws)
            tiles = tiles_per_call(batch, self.peak_numel, self.max_batch_elements)
            active = tally.undecided(threshold)
            pairs = [(i, r) for i in active for r in range(self.repeats)]
            for first in range(0, len(pairs), tiles):
                group = pairs[first:first + tiles]
                correct = self._correct(noise, tally.sigmas, group, clean, draws, labels)
                for (i, r), c in zip(group, correct):
                    tally.add(i, r, c)
            tally.seen(active, batch)
            if not tally.undecided(threshold):
                break
        return tally.measurements(len(self.y))

    @staticmethod
    def _draws(sources: list[NoiseSource], clean: torch.Tensor, per_element: int) -> list[list[torch.Tensor]]:
        """Per repeat, the standard-normal tensors the noise model asks for, from one fill each."""
        size = clean.numel()
        out = []
        for source in sources:
            flat = source.standard_normal((per_element * size,), clean.dtype)
            out.append([flat[d * size:(d + 1) * size].view_as(clean) for d in range(per_element)])
        return out

    def _correct(self, noise: NoiseModel, sigmas: list[float], group: list[tuple[int, int]], clean: torch.Tensor,
                 draws: list[list[torch.Tensor]], labels: torch.Tensor) -> list[int]:
        count, batch = len(group), clean.shape[0]
        levels = {sigmas[i] for i, _ in group}
        if len(levels) == 1:
            level: float | torch.Tensor = levels.pop()
        else:
            level = torch.tensor([sigmas[i] for i, _ in group], dtype=clean.dtype).repeat_interleave(batch)
        tiled = clean.repeat(count, *([1] * (clean.dim() - 1)))
        stacked = [torch.cat([draws[r][d] for _, r in group]) if count > 1 else draws[group[0][1]][d]
                   for d in range(len(draws[0]))]
        supply = iter(stacked)
        single = noise.with_magnitude(level).averaged(self.site_repeats)
        noisy = single.perturb(tiled, lambda: next(supply), self.factor, inplace=True)
        pred = self.chain.run(noisy, self.cut).argmax(1).view(count, batch)
        return (pred == labels).sum(1).tolist()


# ------------------------------------------------------------------------------ the walk
@dataclasses.dataclass
class SiteWalk:
    """One site's result: how it was evaluated, what was measured, its midpoint."""

    site: Site
    path: str
    measurements: list[Measurement]
    midpoint: Midpoint
    seconds: float

    def rows(self, confidence: float = 0.95) -> list[dict[str, Any]]:
        return [m.row(confidence) for m in sorted(self.measurements, key=lambda m: m.sigma)]

    def to_dict(self, confidence: float = 0.95) -> dict[str, Any]:
        return {"site": self.site.to_dict(), "path": self.path, "midpoint": self.midpoint.to_dict(),
                "evaluations": len(self.measurements), "seconds": self.seconds, "rows": self.rows(confidence)}


@dataclasses.dataclass
class WalkResult:
    mode: str
    noise: dict[str, Any]
    clean: float
    chance: float
    seed: int
    repeats: int
    sites: list[SiteWalk]
    seconds: float
    chain: bool

    def to_dict(self, confidence: float = 0.95) -> dict[str, Any]:
        return {"mode": self.mode, "noise": self.noise, "clean_accuracy": self.clean, "chance": self.chance,
                "seed": self.seed, "repeats": self.repeats, "seconds": self.seconds, "chain_model": self.chain,
                "sites": [s.to_dict(confidence) for s in self.sites]}


def walk(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: NoiseModel,
    *,
    num_classes: int,
    sites: Any = None,
    sigmas: Sequence[float] | None = None,
    sigma_range: tuple[float, float] | None = None,
    repeats: int = 5,
    seed: int = 0,
    site_repeats: int = 1,
    site_types: Sequence[Any] | None = None,
    include_input: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
    max_batch_elements: int = DEFAULT_BATCH_ELEMENTS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    split: bool = True,
    progress: Callable[[SiteWalk], None] | None = None,
) -> WalkResult:
    """Noise at one site at a time: a dense grid (``sigmas``) or only mu (``sigma_range``, adaptive).

    ``split=False`` forces the full-forward path for every site (for comparison).
    """
    if (sigmas is None) == (sigma_range is None):
        raise NoraError("give either a sigma grid (dense walk) or a sigma range (adaptive search for mu)")
    if injector_of(model) is not None:
        raise NoraError("the model already has noise attached; detach it before a walk")
    repeats = check_repeats(repeats)
    site_repeats = check_repeats(site_repeats)
    grid = check_grid(sigmas) if sigmas is not None else None
    lo_hi = check_sigma_range(*sigma_range) if sigma_range is not None else None
    chance = chance_level(num_classes)
    started = time.perf_counter()
    types = resolve_site_types(site_types)
    was_training = model.training
    model.eval()
    try:
        all_sites = discover_sites(model, x[:2], types, include_input)
        chosen = select_sites(all_sites, sites)
        if grid is None:
            # Early-stopped measurements need an unbiased sample: a seeded shuffle of the test set.
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            x, y = x[order], y[order]
        chain = split_chain(model, x[:2], all_sites, types) if split else None
        clean = clean_accuracy(model, x, y, chunk_size)
        reference = None
        if noise.relative is not None:
            reference = calibration_reference(model, x, noise.relative, chunk_size=chunk_size, site_types=types,
                                              include_input=include_input)
        cache = ActivationCache(chain, x, chunk_size, cache_bytes) if chain is not None else None
        results = []
        for index in chosen:
            site = all_sites[index]
            t0 = time.perf_counter()
            usable = chain is not None and index in chain.cuts and noise.averaged(site_repeats) is not None
            if usable:
                cache.move_to(chain.cuts[index], site.numel)
                peak = max(s.numel for s in all_sites[index:])
                evaluator = SplitEvaluator(chain, cache, site, y, repeats=repeats, seed=seed, peak_numel=peak,
                                           max_batch_elements=max_batch_elements, site_repeats=site_repeats,
                                           factor=1.0 if reference is None else reference[index])
                measured, mid = _evaluate(evaluator, noise, grid, lo_hi, clean, chance)
            else:
                options = {"sites": [index], "repeats": site_repeats, "site_types": types,
                           "include_input": include_input}
                with InjectorEvaluator(model, x, y, repeats=repeats, seed=seed, chunk_size=chunk_size,
                                       max_batch_elements=max_batch_elements, injector_options=options,
                                       relative=noise.relative) as evaluator:
                    measured, mid = _evaluate(evaluator, noise, grid, lo_hi, clean, chance)
            result = SiteWalk(site, SPLIT if usable else FULL_FORWARD, measured, mid, time.perf_counter() - t0)
            results.append(result)
            if progress is not None:
                progress(result)
    finally:
        model.train(was_training)
    return WalkResult("grid" if grid is not None else "adaptive", noise.to_dict(), clean, chance, seed, repeats,
                      results, time.perf_counter() - started, chain is not None)


def _evaluate(evaluator, noise: NoiseModel, grid, lo_hi, clean: float, chance: float):
    if grid is not None:
        measured = evaluator.measure(noise, grid)
        return measured, midpoint(grid, [m.mean for m in measured], clean, chance)
    mid, measured = search_midpoint(lambda s, t: evaluator.measure(noise, s, t), *lo_hi, clean, chance)
    return measured, mid


def naive_walk(model: nn.Module, loader, noise: NoiseModel, sigmas: Sequence[float], *, num_classes: int,
               sites: Any = None, repeats: int = 5, seed: int = 0, site_types: Sequence[Any] | None = None,
               include_input: bool = True) -> WalkResult:
    """The reference walk: ``noisy_accuracy`` (full forward, one repeat at a time) for every site."""
    from nora.analysis.evaluate import accuracy, noisy_accuracy

    grid = check_grid(sigmas)
    chance = chance_level(num_classes)
    started = time.perf_counter()
    example = next(iter(loader))[0]
    all_sites = discover_sites(model, example[:2], resolve_site_types(site_types), include_input)
    clean = accuracy(model, loader)
    results = []
    for index in select_sites(all_sites, sites):
        t0 = time.perf_counter()
        rows = noisy_accuracy(model, loader, noise, grid, repeats=repeats, seed=seed,
                              injector_options={"sites": [index], "site_types": site_types,
                                                "include_input": include_input})
        measured = [Measurement(r["sigma"], r["values"], len(loader.dataset), True) for r in rows]
        mid = midpoint(grid, [r["mean"] for r in rows], clean, chance)
        results.append(SiteWalk(all_sites[index], FULL_FORWARD, measured, mid, time.perf_counter() - t0))
    return WalkResult("naive", noise.to_dict(), clean, chance, seed, repeats, results,
                      time.perf_counter() - started, False)
