"""Attach noise to the sites of any ``nn.Module`` with forward hooks.

One injector owns one model. Placement (methods.md section 3) is resolved into a plan, one entry per
site: global (every site), layer-wise (selected sites) or mapped (a sigma per site, optionally
renormalised to a fixed budget). Repeated execution (section 4) averages R draws per site; for the
Gaussian models this is done exactly in closed form (sigma / sqrt(R)), otherwise literally.

All standard-normal draws of one forward pass are generated in one parallel fill at the start of the
pass (the site sizes are known from discovery) and handed out as views, which is what keeps the
overhead low: see ``benchmarks/noise_overhead.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.noise.models import NoiseModel, Sigma, check_sigma
from nora.noise.rng import NoiseSource
from nora.sim.sites import (
    Site,
    discover_sites,
    eligible_modules,
    resolve_site_types,
    select_sites,
)

When = Literal["always", "train", "eval"]
_ATTR = "_nora_injector"


@dataclasses.dataclass(frozen=True)
class SiteNoise:
    """What happens at one site: the model applied once, or averaged over ``repeats`` draws."""

    noise: NoiseModel
    repeats: int = 1

    @functools.cached_property
    def effective(self) -> NoiseModel | None:
        """A single-draw model equal in distribution to the average, when one exists."""
        return self.noise.averaged(self.repeats)

    @functools.cached_property
    def draws(self) -> int:
        return self.noise.draws * (1 if self.effective is not None else self.repeats)


class NoiseInjector:
    """Noise at the sites of one model; use ``nora.attach`` to create one."""

    def __init__(
        self,
        model: nn.Module,
        noise: NoiseModel | None = None,
        *,
        sites: Any = None,
        sigmas: Sequence[float] | None = None,
        budget: float | None = None,
        repeats: int | Sequence[int] | dict[Any, int] = 1,
        site_types: Iterable[type[nn.Module] | str] | None = None,
        include_input: bool = True,
        example_input: torch.Tensor | None = None,
        seed: int | None = None,
        when: When = "always",
    ):
        if getattr(model, _ATTR, None) is not None:
            raise NoraError("this model already has noise attached; detach it first")
        if noise is None and sigmas is None:
            raise NoraError("give a noise model (and optionally sigmas= for a mapped placement)")
        if when not in ("always", "train", "eval"):
            raise NoraError(f"when must be 'always', 'train' or 'eval', got {when!r}")
        if budget is not None:
            budget = check_sigma(budget, "budget")
            if sigmas is None:
                raise NoraError("a noise budget needs a per-site sigma map (sigmas=...)")
        self.model = model
        self.noise = noise
        self.selection = sites
        self.sigmas = None if sigmas is None else [check_sigma(s, f"sigma of site {i}") for i, s in enumerate(sigmas)]
        self.budget = budget
        self.repeats = repeats
        self.site_types = resolve_site_types(site_types)
        self.include_input = include_input
        self.when: When = when
        self.enabled = True
        #: Multiplies every site's sigma: a float, or a per-sample tensor (training schedules, VANT).
        self.sigma_scale: Sigma = 1.0
        #: Per-site reference scale for relative sigma, set by ``calibrate``.
        self.reference: list[float] | None = None
        self.sites: list[Site] | None = None
        self.plan: list[SiteNoise | None] = []
        self._source = NoiseSource(seed)
        self._modules = eligible_modules(model, self.site_types)
        self._cursor = 0
        self._buffer: torch.Tensor | None = None
        self._offset = 0
        self._workspace: torch.Tensor | None = None
        self._discovering = False
        self._handles: list[Any] = []
        if example_input is not None:
            self.discover(example_input)
        self._install()

    # ----------------------------------------------------------------- discovery and planning
    def discover(self, example_input: torch.Tensor) -> list[Site]:
        self._discovering = True
        try:
            self.sites = discover_sites(self.model, example_input, self.site_types, self.include_input)
        finally:
            self._discovering = False
        self.plan = self._resolve_plan(self.sites)
        return self.sites

    def _resolve_plan(self, sites: list[Site]) -> list[SiteNoise | None]:
        n = len(sites)
        chosen = set(select_sites(sites, self.selection))
        repeats = self._resolve_repeats(sites)
        models: list[NoiseModel | None]
        if self.sigmas is not None:
            if len(self.sigmas) != n:
                raise NoraError(f"the sigma map has {len(self.sigmas)} values but the model has {n} sites")
            base = self.noise
            if base is None:
                from nora.noise.models import GaussianAdditive

                base = GaussianAdditive(0.0)
            sigmas = list(self.sigmas)
            if self.budget is not None:
                total = sum(sigmas)
                if total <= 0:
                    raise NoraError("cannot renormalise an all-zero sigma map to a budget")
                sigmas = [s * self.budget / total for s in sigmas]
            models = [base.with_magnitude(s) if i in chosen else None for i, s in enumerate(sigmas)]
        else:
            models = [self.noise if i in chosen else None for i in range(n)]
        # A site at sigma 0 is clean: it gets no plan entry, so no draws are made for it.
        return [
            SiteNoise(m, repeats[i]) if m is not None and not _silent(m) else None for i, m in enumerate(models)
        ]

    def _resolve_repeats(self, sites: list[Site]) -> list[int]:
        n = len(sites)
        spec = self.repeats
        if isinstance(spec, dict):
            values = [1] * n
            for selection, count in spec.items():
                for i in select_sites(sites, selection):
                    values[i] = count
        elif isinstance(spec, (list, tuple)):
            if len(spec) != n:
                raise NoraError(f"the repeats list has {len(spec)} values but the model has {n} sites")
            values = list(spec)
        else:
            values = [spec] * n
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NoraError(f"repeats must be integers >= 1, got {value!r}")
        return values

    def set_noise(self, noise: NoiseModel | None = None, sites: Any = "keep", sigmas: Any = "keep") -> None:
        """Change the noise model and/or placement of an attached injector (used by sweeps)."""
        if noise is not None:
            self.noise = noise
        if sites != "keep":
            self.selection = sites
        if sigmas != "keep":
            self.sigmas = None if sigmas is None else [check_sigma(s) for s in sigmas]
        if self.sites is not None:
            self.plan = self._resolve_plan(self.sites)

    def reseed(self, seed: int) -> None:
        self._source = NoiseSource(seed, self._source.device)

    # ----------------------------------------------------------------- calibration (relative sigma)
    def calibrate(self, batches: Iterable[torch.Tensor], statistic: Literal["std", "maxabs"] = "std") -> list[float]:
        """Measure each site's clean output scale (std or max |x|) for relative sigma."""
        if statistic not in ("std", "maxabs"):
            raise NoraError(f"calibration statistic must be 'std' or 'maxabs', got {statistic!r}")
        stats: dict[int, list[float]] = {}
        was_enabled, self.enabled = self.enabled, False
        collect: list[torch.Tensor] = []
        handles = []

        def record(_module, _inputs, output):
            collect.append(output.detach())

        pre = self.model.register_forward_pre_hook(lambda _m, args: collect.append(args[0].detach()))
        handles.append(pre)
        handles += [m.register_forward_hook(record) for _, m in self._modules]
        was_training = self.model.training
        self.model.eval()
        count = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    collect.clear()
                    if self.sites is None:
                        self.discover(batch)
                    self.model(batch)
                    outputs = collect if self.include_input else collect[1:]
                    for i, out in enumerate(outputs):
                        stats.setdefault(i, []).append(self._statistic(out, statistic))
                    count += 1
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
            self.enabled = was_enabled
        if count == 0:
            raise NoraError("calibration needs at least one batch of data")
        agg = max if statistic == "maxabs" else (lambda v: math.sqrt(sum(x * x for x in v) / len(v)))
        self.reference = [float(agg(stats[i])) for i in range(len(stats))]
        return self.reference

    @staticmethod
    def _statistic(x: torch.Tensor, statistic: str) -> float:
        return float(x.abs().max()) if statistic == "maxabs" else float(x.float().std())

    # ----------------------------------------------------------------- hooks
    def _install(self) -> None:
        setattr(self.model, _ATTR, self)
        self._handles.append(self.model.register_forward_pre_hook(self._on_start))
        for _, module in self._modules:
            self._handles.append(module.register_forward_hook(self._on_site))
        self._handles.append(self.model.register_forward_hook(self._on_end))

    def detach(self) -> nn.Module:
        """Remove every hook; the model runs clean again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)
        self._buffer = self._workspace = None
        return self.model

    def __enter__(self) -> "NoiseInjector":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def active(self) -> bool:
        if not self.enabled or self._discovering:
            return False
        if self.when == "always":
            return True
        return self.model.training == (self.when == "train")

    def _on_start(self, _module, args):
        if not self.active() or not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        if self.sites is None:
            self.discover(x)
        self._cursor = 0
        self._prepare_buffer(x.shape[0], x.device, x.dtype)
        if self.include_input:
            noisy = self._apply(0, x, inplace=False)
            self._cursor = 1
            return (noisy, *args[1:])
        return None

    def _prepare_buffer(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        total = batch * sum(s.numel * p.draws for s, p in zip(self.sites, self.plan) if p is not None)
        self._offset = 0
        if total == 0:
            self._buffer = None
            return
        if self._source.device != device:
            self._source = NoiseSource(self._source.seed, device)
        if torch.is_grad_enabled():
            # Autograd may keep the draws (multiplicative noise), so they must not be reused.
            self._buffer = self._source.standard_normal((total,), dtype)
            return
        ws = self._workspace
        if ws is None or ws.numel() < total or ws.device != device or ws.dtype != dtype:
            ws = self._workspace = torch.empty(total, dtype=dtype, device=device)
        self._buffer = self._source.fill_(ws[:total])

    def _draw_like(self, x: torch.Tensor):
        def draw() -> torch.Tensor:
            n = x.numel()
            buf = self._buffer
            if buf is not None and self._offset + n <= buf.numel():
                z = buf[self._offset : self._offset + n].view_as(x)
                self._offset += n
                return z
            return self._source.standard_normal(x.shape, x.dtype)

        return draw

    def _on_site(self, _module, _inputs, output):
        if not self.active() or self.sites is None or not isinstance(output, torch.Tensor):
            return None
        index = self._cursor
        self._cursor += 1
        if index >= len(self.plan):
            raise NoraError(
                f"the model made more site calls ({index + 1}) than were discovered ({len(self.plan)}); "
                "its forward pass changes with the input: rediscover sites with an input of this kind"
            )
        return self._apply(index, output, inplace=not torch.is_grad_enabled())

    def _on_end(self, _module, _inputs, _output):
        if self.active() and self.sites is not None and self._cursor not in (0, len(self.plan)):
            expected, seen = len(self.plan), self._cursor
            self._cursor = 0
            raise NoraError(
                f"the forward pass made {seen} site calls but {expected} were discovered; "
                "rediscover sites with an input of this kind"
            )
        self._buffer = None
        return None

    def _factor(self, index: int, noise: NoiseModel) -> Sigma:
        factor = self.sigma_scale
        if noise.relative is not None:
            if self.reference is None:
                raise NoraError("relative sigma needs calibration data: call calibrate() first")
            factor = factor * self.reference[index]
        return factor

    def _apply(self, index: int, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        spec = self.plan[index]
        if spec is None:
            return x
        factor = self._factor(index, spec.noise)
        draw = self._draw_like(x)
        single = spec.effective
        if single is not None:
            return single.perturb(x, draw, factor, inplace)
        total = spec.noise.perturb(x, draw, factor, False)
        for _ in range(spec.repeats - 1):
            total = total + spec.noise.perturb(x, draw, factor, False)
        return total / spec.repeats

    # ----------------------------------------------------------------- reporting
    def cost(self) -> dict[str, Any]:
        """Analog evaluations per sample that the repeat policy needs, against one per site."""
        if self.sites is None:
            raise NoraError("sites are not known yet: run a forward pass or pass example_input")
        base = sum(s.numel for s, p in zip(self.sites, self.plan) if p is not None)
        with_repeats = sum(s.numel * p.repeats for s, p in zip(self.sites, self.plan) if p is not None)
        return {
            "noisy_sites": sum(p is not None for p in self.plan),
            "evaluations_per_sample": with_repeats,
            "baseline_per_sample": base,
            "overhead": (with_repeats / base) if base else 1.0,
            "repeats": [p.repeats if p is not None else 0 for p in self.plan],
        }

    def describe(self) -> list[dict[str, Any]]:
        """One row per site: its place, its noise and repeats."""
        if self.sites is None:
            raise NoraError("sites are not known yet: run a forward pass or pass example_input")
        return [
            {
                **site.to_dict(),
                "noise": spec.noise.describe() if spec else "-",
                "repeats": spec.repeats if spec else 0,
            }
            for site, spec in zip(self.sites, self.plan)
        ]


def _silent(noise: NoiseModel) -> bool:
    value = getattr(noise, noise.magnitude_field)
    return not isinstance(value, torch.Tensor) and value == 0.0


def attach(model: nn.Module, noise: NoiseModel | None = None, **options: Any) -> NoiseInjector:
    """Put noise on ``model``'s sites. Returns the injector; ``.detach()`` or a ``with`` block removes it."""
    return NoiseInjector(model, noise, **options)


def injector_of(model: nn.Module) -> NoiseInjector | None:
    return getattr(model, _ATTR, None)


def list_sites(
    model: nn.Module,
    example_input: torch.Tensor,
    site_types: Iterable[type[nn.Module] | str] | None = None,
    include_input: bool = True,
) -> list[Site]:
    return discover_sites(model, example_input, resolve_site_types(site_types), include_input)
