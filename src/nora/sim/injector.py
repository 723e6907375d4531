"""One handle that owns all the noise of a ``NoiseSpec`` on one model: activations, weights, hardware.

Activation noise is applied with forward hooks at the sites (every call of a computing module,
methods.md section 1). The placement (section 3: global, layer-wise, mapped with a budget) is
resolved into a plan, one entry per site; repeated execution (section 4) averages R draws per site,
in closed form (sigma / sqrt(R)) where the model has one, literally otherwise.

Randomness: the handle's seed-tree node gives independent children for activation noise, weight
noise and the hardware model. For packed evaluation (the measurement engine tiles R repeats of a
chunk along the batch) ``use_streams`` gives every tile its own activation stream, and each tile
draws exactly what an unpacked run of that repeat would draw, so packing never changes a number.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Literal, Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.noise.models import NoiseModel, Sigma
from nora.noise.rng import BankStream, Stream, add_draw, make_stream, mode_of
from nora.noise.weight import WeightNoise
from nora.seeds import SeedTree
from nora.sim.sites import Site, SitePolicy, discover_sites, eligible_modules, select_sites, site_tensors
from nora.sim.spec import NoiseSpec, spec_from_options

When = Literal["always", "train", "eval"]
_ATTR = "_nora_injector"
#: Autograd nodes whose backward reads only the op's inputs, never its result.
_RESULT_FREE = frozenset({
    "ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "MaxPool2DWithIndicesBackward0",
    "MaxPool3DWithIndicesBackward0", "AvgPool2DBackward0", "AvgPool3DBackward0", "AdaptiveAvgPool2DBackward0",
    "NativeBatchNormBackward0",
})


@functools.cache
def _own_module(cls: type) -> bool:
    """A module class of torch.nn or nora itself (whose forward keeps nothing for a backward)."""
    return cls.__module__.startswith(("torch.nn.", "nora."))


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


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Reference scale per site for relative sigma, measured once on clean activations."""

    statistic: str
    samples: int
    reference: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "samples": self.samples, "reference": list(self.reference)}


def resolve_plan(spec: NoiseSpec, sites: Sequence[Site]) -> list[SiteNoise | None]:
    """One entry per site: its noise model and repeats, or None for a clean site."""
    n = len(sites)
    chosen = set(select_sites(sites, None if spec.sites is None else list(spec.sites)
                              if isinstance(spec.sites, tuple) else spec.sites))
    repeats = resolve_repeats(spec.repeats, sites)
    if spec.activation is None:
        return [None] * n
    if spec.sigmas is not None:
        if len(spec.sigmas) != n:
            raise NoraError(f"the sigma map has {len(spec.sigmas)} values but the model has {n} sites")
        sigmas = list(spec.sigmas)
        if spec.budget is not None:
            # The budget is shared by the noisy sites only: excluded sites neither take nor count.
            total = sum(sigmas[i] for i in chosen)
            if total <= 0:
                raise NoraError("cannot renormalise the sigma map to a budget: the selected sites all have sigma 0")
            sigmas = [s * spec.budget / total for s in sigmas]
        models = [spec.activation.with_magnitude(s) if i in chosen else None for i, s in enumerate(sigmas)]
    else:
        models = [spec.activation if i in chosen else None for i in range(n)]
    # A site at sigma 0 is clean: it gets no plan entry, so no draws are made for it.
    return [SiteNoise(m, repeats[i]) if m is not None and not _silent(m) else None for i, m in enumerate(models)]


def resolve_repeats(spec: Any, sites: Sequence[Site]) -> list[int]:
    n = len(sites)
    if isinstance(spec, dict) or hasattr(spec, "items"):
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


def _silent(noise: NoiseModel) -> bool:
    value = getattr(noise, noise.magnitude_field)
    return not isinstance(value, torch.Tensor) and value == 0.0


class NoiseInjector:
    """The noise of one ``NoiseSpec`` on one model; create it with ``nora.attach``."""

    def __init__(self, model: nn.Module, spec: NoiseSpec, *, seed: SeedTree | int | None = None,
                 example_input: torch.Tensor | None = None, when: When = "always"):
        if getattr(model, _ATTR, None) is not None:
            raise NoraError("this model already has noise attached; detach it first")
        if when not in ("always", "train", "eval"):
            raise NoraError(f"when must be 'always', 'train' or 'eval', got {when!r}")
        if not isinstance(spec, NoiseSpec):
            raise NoraError(f"expected a NoiseSpec, got {type(spec).__name__}")
        self.model = model
        self.spec = spec
        self.when: When = when
        self.enabled = True
        #: Multiplies every site's sigma: a float, or a per-sample tensor (training schedules, VANT, jitter).
        self.sigma_scale: Sigma = 1.0
        self._scale_cache: tuple[torch.Tensor, int, dict] | None = None
        self.calibration: Calibration | None = None
        self.sites: list[Site] | None = None
        self.plan: list[SiteNoise | None] = []
        self.node = SeedTree.of(seed)
        self.streams = [self._stream(self.node)]
        self._modules = eligible_modules(model, spec.policy)
        self._cursor = 0
        self._discovering = False
        self._handles: list[Any] = []
        self.weight_noise: WeightNoise | None = None
        self.hardware = None
        try:
            if example_input is not None:
                self.discover(example_input)
            self._install()
        except BaseException:
            self.detach()
            raise

    # ----------------------------------------------------------------- discovery and planning
    @property
    def policy(self) -> SitePolicy:
        return self.spec.policy

    def discover(self, example_input: torch.Tensor) -> list[Site]:
        self._discovering = True
        try:
            sites = discover_sites(self.model, example_input[:2], self.spec.policy)
        finally:
            self._discovering = False
        self.plan = resolve_plan(self.spec, sites)
        self.sites = sites
        return sites

    def set_spec(self, spec: NoiseSpec) -> None:
        """Change the activation noise or placement of an attached handle (weights and hardware stay)."""
        if spec.policy != self.spec.policy:
            raise NoraError("the site policy of an attached handle cannot change; attach again")
        plan = resolve_plan(spec, self.sites) if self.sites is not None else []
        previous, self.spec, self.plan = self.spec, spec, plan
        if mode_of(spec) != mode_of(previous):
            self.streams = [self._stream(self.node)]
        if self.calibration is not None and spec.relative not in (None, self.calibration.statistic):
            self.calibration = None
        if spec.weight != previous.weight:
            if self.weight_noise is not None:
                self.weight_noise.detach()
                self.weight_noise = None
            self._attach_weight_noise()
        if spec.hardware is not previous.hardware:  # a varied physical parameter: a new hardware model
            if self.hardware is not None:
                self.hardware.detach()
                self.hardware = None
            self._attach_hardware()

    def reseed(self, seed: SeedTree | int) -> None:
        """A new reproducible realisation of every noise this handle owns."""
        self.node = SeedTree.of(seed)
        self.streams = [self._stream(self.node)]
        if self.weight_noise is not None:
            self.weight_noise.reseed(self.node.child("weight"))
        if self.hardware is not None:
            self.hardware.reseed(self.node.child("hardware"))

    def use_streams(self, nodes: Sequence[SeedTree]) -> None:
        """Activation streams per batch tile: tile t of the next passes draws from ``nodes[t]``'s child."""
        if not nodes:
            raise NoraError("use_streams needs at least one seed-tree node")
        self.streams = [self._stream(SeedTree.of(node)) for node in nodes]

    def _stream(self, node: SeedTree) -> Stream | BankStream:
        """The activation stream below ``node`` in the spec's noise mode (exact or fast)."""
        return make_stream(node.child("activation"), mode_of(self.spec))

    # ----------------------------------------------------------------- calibration (relative sigma)
    def calibrate(self, batches: Iterable[torch.Tensor], statistic: str | None = None) -> list[float]:
        """Each site's clean output scale (std or max |x|) over all of ``batches``, exactly, in float64."""
        statistic = statistic or self.spec.relative or "std"
        if statistic not in ("std", "maxabs"):
            raise NoraError(f"calibration statistic must be 'std' or 'maxabs', got {statistic!r}")
        sums: dict[int, list[float]] = {}
        was_enabled, self.enabled = self.enabled, False
        collect: list[torch.Tensor] = []

        def record(_module, _inputs, output):
            tensors = site_tensors(output)
            if tensors is not None:
                collect.append(torch.cat([t.detach().reshape(-1) for t in tensors]))

        handles = [m.register_forward_hook(record) for _, m in self._modules]
        was_training = self.model.training
        self.model.eval()
        count = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    if self.sites is None:
                        self.discover(batch)
                    collect.clear()
                    if self.policy.include_input:
                        collect.append(batch.detach().reshape(-1))
                    self.model(batch)
                    if len(collect) != len(self.sites):
                        raise NoraError(f"calibration saw {len(collect)} site outputs, but the model has "
                                        f"{len(self.sites)} sites")
                    for i, out in enumerate(collect):
                        out = out.double()
                        acc = sums.setdefault(i, [0.0, 0.0, 0.0, 0.0])
                        acc[0] += out.numel()
                        acc[1] += float(out.sum())
                        acc[2] += float((out * out).sum())
                        acc[3] = max(acc[3], float(out.abs().max())) if out.numel() else acc[3]
                    count += len(batch)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
            self.enabled = was_enabled
        if count == 0:
            raise NoraError("calibration needs at least one batch of data")
        reference = []
        for i in range(len(self.sites)):
            n, total, squares, maxabs = sums[i]
            if statistic == "maxabs":
                reference.append(maxabs)
            else:
                mean = total / n
                reference.append(math.sqrt(max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1)))
        self.calibration = Calibration(statistic, count, tuple(reference))
        return reference

    def set_calibration(self, calibration: Calibration) -> None:
        if self.sites is not None and len(calibration.reference) != len(self.sites):
            raise NoraError(f"the calibration has {len(calibration.reference)} sites but the model has {len(self.sites)}")
        self.calibration = calibration

    @property
    def reference(self) -> list[float] | None:
        return None if self.calibration is None else list(self.calibration.reference)

    # ----------------------------------------------------------------- hooks
    def _install(self) -> None:
        setattr(self.model, _ATTR, self)
        self._handles.append(self.model.register_forward_pre_hook(self._on_start))
        for _, module in self._modules:
            self._handles.append(module.register_forward_hook(self._on_site))
        self._handles.append(self.model.register_forward_hook(self._on_end))
        self._attach_weight_noise()
        self._attach_hardware()

    def _attach_weight_noise(self) -> None:
        if self.spec.weight is not None:
            self.weight_noise = WeightNoise(self.model, self.spec.weight.noise, layers=self.spec.weight.layers,
                                            seed=self.node.child("weight"), when=self.when)

    def _attach_hardware(self) -> None:
        if self.spec.hardware is not None:
            self.hardware = self.spec.hardware.attach(self.model, self.node.child("hardware"), self.spec.noise_mode)

    def detach(self) -> nn.Module:
        """Remove every hook, the weight noise and the hardware model; the model runs clean again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.weight_noise is not None:
            self.weight_noise.detach()
            self.weight_noise = None
        if self.hardware is not None:
            self.hardware.detach()
            self.hardware = None
        if getattr(self.model, _ATTR, None) is self:
            delattr(self.model, _ATTR)
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
            try:
                self.discover(x)
            except BaseException:
                self.detach()  # a failed lazy attach leaves the model exactly as it was
                raise
        self._cursor = 0
        if self.policy.include_input:
            noisy = self._apply(0, x, inplace=False)
            self._cursor = 1
            return (noisy, *args[1:])
        return None

    def _on_site(self, module, inputs, output):
        if not self.active() or self.sites is None:
            return None
        tensors = site_tensors(output)
        if tensors is None:
            return None
        index = self._cursor
        self._cursor += 1
        if index >= len(self.plan):
            raise NoraError(
                f"the model made more site calls ({index + 1}) than were discovered ({len(self.plan)}); "
                "its forward pass changes with the input: rediscover sites with an input of this kind"
            )
        inplace = not torch.is_grad_enabled()
        if isinstance(output, torch.Tensor):
            if not inplace and self._adds_outside_graph(index, module, inputs, output):
                with torch.no_grad():
                    self._apply(index, output, True)
                return output
            return self._apply(index, output, inplace)
        # A tuple or list (a recurrent layer's output and hidden state): every float tensor takes noise.
        noisy = {id(t): self._apply(index, t, inplace) for t in tensors}
        items = [noisy.get(id(t), t) for t in output]
        return items if isinstance(output, list) else tuple(items)

    def _adds_outside_graph(self, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> bool:
        """Whether additive noise can go into ``output`` in place while autograd records, with no
        graph node: its gradient is the identity, so only a backward that reads ``output`` itself
        would notice, and the op that made it is one whose backward reads only its inputs
        (``_RESULT_FREE``). Excluded: views, an output that is one of the inputs, and modules that
        are not torch's or nora's own (their forward may keep the output for a backward), and
        tracing or compiling (their graphs record what runs). The in-place write bumps the version, so
        autograd's own check would still catch a saved use."""
        spec = self.plan[index]
        return (
            spec is not None and spec.effective is not None and spec.effective.identity_gradient
            and not torch._C._get_tracing_state() and not torch.compiler.is_compiling()
            and type(output.grad_fn).__name__ in _RESULT_FREE and not output._is_view()
            and _own_module(type(module)) and all(output is not t for t in inputs)
        )

    def _on_end(self, _module, _inputs, _output):
        if self.active() and self.sites is not None and self._cursor not in (0, len(self.plan)):
            expected, seen = len(self.plan), self._cursor
            self._cursor = 0
            raise NoraError(
                f"the forward pass made {seen} site calls but {expected} were discovered; "
                "rediscover sites with an input of this kind"
            )
        return None

    def _factor(self, index: int, noise: NoiseModel, x: torch.Tensor) -> Sigma:
        factor = self.sigma_scale
        if isinstance(factor, torch.Tensor) and factor.dim() == 1:
            factor = self._shaped_scale(factor, x)
        if noise.relative is not None:
            if self.calibration is None:
                raise NoraError("relative sigma needs calibration data: call calibrate() first "
                                "(the measurement engine and the trainer do so)")
            factor = factor * self.calibration.reference[index]
        return factor

    def _shaped_scale(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """A per-sample ``sigma_scale`` shaped [batch, 1, ...] on x's device and dtype, made once per
        batch and shape kind rather than at every site (the cache holds the scale it was made from and
        its version, so a scale changed in place is shaped again)."""
        cache = self._scale_cache
        if cache is None or cache[0] is not scale or cache[1] != scale._version:
            cache = self._scale_cache = (scale, scale._version, {})
        key = (x.dim(), x.dtype, x.device)
        shaped = cache[2].get(key)
        if shaped is None:  # a scale that does not fit the batch is refused by the noise model's level
            shaped = cache[2][key] = scale.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return shaped

    def _draw_like(self, x: torch.Tensor) -> "_SiteDraws":
        tiles = len(self.streams)
        if tiles > 1 and x.shape[0] % tiles:
            raise NoraError(f"a batch of {x.shape[0]} cannot be split into {tiles} equal repeat tiles")
        return _SiteDraws(self.streams, x)

    def _apply(self, index: int, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        spec = self.plan[index]
        if spec is None:
            return x
        factor = self._factor(index, spec.noise, x)
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
        return repetition_cost(self.sites, self.plan)

    def describe(self) -> list[dict[str, Any]]:
        """One row per site: its place, its noise and repeats."""
        if self.sites is None:
            raise NoraError("sites are not known yet: run a forward pass or pass example_input")
        return [
            {**site.to_dict(), "noise": spec.noise.describe() if spec else "-", "repeats": spec.repeats if spec else 0}
            for site, spec in zip(self.sites, self.plan)
        ]


class _SiteDraws:
    """The draws of one site call (a ``Draw`` of ``nora.noise.models``): from one stream, or one
    stream per repeat tile along the batch. Draws add (bank draws also scale) themselves as they are
    made, without writing z."""

    __slots__ = ("streams", "x")

    def __init__(self, streams: Sequence[Stream | BankStream], x: torch.Tensor):
        self.streams, self.x = streams, x

    def __call__(self) -> torch.Tensor:
        z = torch.empty_like(self.x, memory_format=torch.contiguous_format)
        if len(self.streams) == 1:
            return self.streams[0].normal_(z)
        for stream, part in zip(self.streams, z.chunk(len(self.streams))):
            stream.normal_(part)
        return z

    def add_scaled(self, x: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x + sigma * z``, one repeat tile per stream; each stream adds its draw itself where it can."""
        streams = self.streams
        if not x.is_contiguous():
            return add_draw(x, self(), sigma, inplace)
        if len(streams) == 1:
            return streams[0].add_scaled(x, sigma, inplace)
        if not inplace or isinstance(sigma, torch.Tensor):  # across tiles: through the drawn z
            return add_draw(x, self(), sigma, inplace)
        for stream, part in zip(streams, x.chunk(len(streams))):
            stream.add_scaled(part, sigma, True)
        return x

    def scaled(self, sigma: torch.Tensor) -> torch.Tensor:
        """``sigma * z`` for a level tensor (one pass for one level per sample from one bank stream)."""
        if len(self.streams) == 1 and isinstance(self.streams[0], BankStream) and self.x.is_contiguous():
            return self.streams[0].normal_scaled_(torch.empty_like(self.x), sigma)
        return self().mul_(sigma)


def repetition_cost(sites: Sequence[Site], plan: Sequence[SiteNoise | None]) -> dict[str, Any]:
    """Analog evaluations per sample with the plan's repeats, against one evaluation per noisy site."""
    base = sum(s.numel for s, p in zip(sites, plan) if p is not None)
    with_repeats = sum(s.numel * p.repeats for s, p in zip(sites, plan) if p is not None)
    return {
        "noisy_sites": sum(p is not None for p in plan),
        "evaluations_per_sample": with_repeats,
        "baseline_per_sample": base,
        "overhead": (with_repeats / base) if base else 1.0,
        "repeats": [p.repeats if p is not None else 0 for p in plan],
    }


def attach(model: nn.Module, noise: NoiseModel | NoiseSpec | None = None, *, seed: SeedTree | int | None = None,
           example_input: torch.Tensor | None = None, when: When = "always", **options: Any) -> NoiseInjector:
    """Put noise on ``model``: a ``NoiseSpec``, or a noise model with placement keywords
    (``sites``, ``sigmas``, ``budget``, ``repeats``, ``policy``, ``weight``, ``hardware``).
    Returns the handle; ``.detach()`` or a ``with`` block removes everything it added."""
    spec = noise if isinstance(noise, NoiseSpec) else spec_from_options(noise, **options)
    if isinstance(noise, NoiseSpec) and options:
        raise NoraError(f"give placement inside the NoiseSpec, not as keywords ({', '.join(options)})")
    return NoiseInjector(model, spec, seed=seed, example_input=example_input, when=when)


def injector_of(model: nn.Module) -> NoiseInjector | None:
    return getattr(model, _ATTR, None)


def list_sites(model: nn.Module, example_input: torch.Tensor, site_types: Iterable[Any] | None = None,
               include_input: bool = True, policy: SitePolicy | None = None) -> list[Site]:
    from nora.sim.sites import policy_from

    return discover_sites(model, example_input, policy or policy_from(site_types, include_input))
