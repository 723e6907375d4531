"""The measurement engine: accuracy of a model on data under a ``NoiseSpec``, for every command.

One engine holds one (model, data, specification, seed). It fixes, once, everything that makes two
measurements comparable:

* **Order and chunks.** The evaluation set is put in a seeded random order (so any prefix is an
  unbiased sample for early-stopped searches, and the calibration window is representative) and
  evaluated in chunks of ``chunk_size``.
* **Calibration.** Relative sigma is scaled by each site's clean output std / max|x| measured once
  on the first ``spec.calibration_samples`` samples of that order; the result carries it.
* **Repeat seeds.** Repeat r of every evaluation draws from the seed-tree node
  ``seed/eval/repeat/r`` (activation, weight and hardware children below it), and every magnitude
  restarts from those nodes (common random numbers), so eval, curve, walk, compare, trajectories and
  sweeps see the same draws for the same point.

Two backends compute the same numbers: *full-forward* (the whole network with the noise handle
attached; any model, any specification) and *split* (noise at one site of a chain model: clean
activations at the site are cached, only the suffix runs). Both draw, per repeat and chunk, exactly
the same standard normals, and repeats may be packed along the batch without changing a draw.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from nora.devices import model_device, resolve_device
from nora.errors import NoraError
from nora.measure.accuracy import DEFAULT_CHUNK, clean_accuracy
from nora.measure.chain import DEFAULT_CACHE_BYTES, ActivationCache, Chain, split_chain
from nora.noise.rng import make_stream, mode_of
from nora.seeds import SeedTree
from nora.sim.injector import Calibration, NoiseInjector, injector_of, repetition_cost, resolve_plan
from nora.sim.sites import Site
from nora.sim.spec import NoiseSpec
from nora.stats import summarize_accuracy

#: Elements (floats per site activation) in one forward call of packed repeats; about 8 MB.
DEFAULT_BATCH_ELEMENTS = 1 << 21
#: A running accuracy is "clearly" on one side of a threshold beyond this many standard errors.
DECISION_Z = 4.0
SPLIT = "split"
FULL_FORWARD = "full-forward"

#: Per-sample sigma factors for one repeat: ``scale(repeat_node_stream, batch_size) -> [batch]``.
SampleScale = Callable[[torch.Generator, int], torch.Tensor]


@dataclasses.dataclass
class Measurement:
    """Accuracy at one noise level: per-repeat values over the first ``samples`` samples."""

    sigma: float | None
    values: list[float]
    samples: int
    complete: bool
    path: str = FULL_FORWARD

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def row(self, confidence: float = 0.95) -> dict[str, Any]:
        return {"sigma": self.sigma, **summarize_accuracy(self.values, confidence), "values": self.values,
                "samples": self.samples, "complete": self.complete}


class Tally:
    """Correct counts per (level, repeat) as chunks stream by, and the early-stopping rule."""

    def __init__(self, levels: int, repeats: int):
        self.correct = [[0] * repeats for _ in range(levels)]
        self.samples = [0] * levels

    def undecided(self, threshold: float | None) -> list[int]:
        """Levels whose accuracy is not yet clearly above or below ``threshold`` (all when None)."""
        if threshold is None:
            return list(range(len(self.samples)))
        out = []
        for i, (counts, n) in enumerate(zip(self.correct, self.samples)):
            if n == 0:
                out.append(i)
                continue
            p = sum(counts) / (len(counts) * n)
            # Repeats share their inputs, so the standard error counts samples, not samples x repeats.
            se = (max(p * (1 - p), 1.0 / n) / n) ** 0.5
            if abs(p - threshold) <= DECISION_Z * se:
                out.append(i)
        return out


def check_repeats(repeats: Any, name: str = "repeats") -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise NoraError(f"{name} must be an integer >= 1, got {repeats!r}")
    return repeats


class Engine:
    """Accuracy of ``model`` on (``x``, ``y``) under ``spec``; use as a context manager."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: NoiseSpec | None = None, *,
                 seed: SeedTree | int = 0, repeats: int = 5, chunk_size: int = DEFAULT_CHUNK,
                 device: str | torch.device | None = None, pack: bool = True,
                 max_batch_elements: int = DEFAULT_BATCH_ELEMENTS, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 split: bool = True, calibration: Calibration | None = None,
                 on_measured: Callable[[Measurement], None] | None = None):
        if injector_of(model) is not None:
            raise NoraError("the model already has noise attached; detach it before a measurement")
        if len(x) != len(y) or len(y) == 0:
            raise NoraError(f"the evaluation data need as many labels as samples (> 0), got {len(x)} and {len(y)}")
        self.spec = spec or NoiseSpec()
        self.repeats = check_repeats(repeats)
        self.chunk_size = check_repeats(chunk_size, "chunk size")
        self.device = resolve_device(device) if device is not None else model_device(model)
        if device is not None:
            model.to(self.device)
        else:
            model_device(model)  # mixed devices are an error here, not deep inside a forward
        self.model = model
        self.tree = SeedTree.of(seed)
        self.pack, self.split, self.cache_bytes = pack, split, cache_bytes
        self.on_measured = on_measured  # called after every measured level (progress reporting)
        self.max_batch_elements = max_batch_elements
        order = torch.randperm(len(y), generator=self.tree.child("eval", "order").generator())
        self.order = order
        self.x, self.y = x[order], y[order]
        self._was_training = model.training
        model.eval()
        self.clean = clean_accuracy(model, self.x, self.y, self.chunk_size, self.device)
        example = self.x[:2].to(self.device)
        self.injector = NoiseInjector(model, self.spec, seed=self.repeat_node(0), example_input=example)
        try:
            self.sites: list[Site] = self.injector.sites
            self.calibration = calibration
            if calibration is not None:
                self.injector.set_calibration(calibration)
            elif self.spec.relative is not None:
                self.calibration = self.calibrate(self.spec.relative)
            self._chain: Chain | None | bool = None if split else False
            self._cache: ActivationCache | None = None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.injector.detach()
        self._cache = None
        self.model.train(self._was_training)

    # ------------------------------------------------------------------ pieces
    def repeat_node(self, repeat: int) -> SeedTree:
        """The seed-tree node of repeat ``repeat`` (the one rule for every evaluation)."""
        return self.tree.child("eval", "repeat", repeat)

    def calibrate(self, statistic: str) -> Calibration:
        window = min(self.spec.calibration_samples, len(self.y))
        batches = (self.x[i:min(i + self.chunk_size, window)].to(self.device) for i in range(0, window, self.chunk_size))
        self.injector.calibrate(batches, statistic)
        return self.injector.calibration

    def cost(self, spec: NoiseSpec | None = None) -> dict[str, Any]:
        """Analog evaluations per sample for ``spec``'s repeats against one per noisy site.

        The cost belongs to the placement, not the level: a spec at sigma 0 is costed at sigma 1.
        """
        spec = spec or self.spec
        if spec.activation is not None and spec.sigmas is None and not spec.has_activation_noise:
            spec = spec.with_magnitude(1.0)
        return repetition_cost(self.sites, resolve_plan(spec, self.sites))

    def chain(self) -> Chain | None:
        if self._chain is None:
            self.injector.enabled = False
            try:
                self._chain = split_chain(self.model, self.x[:2].to(self.device), self.sites, self.spec.policy) or False
            finally:
                self.injector.enabled = True
        return self._chain or None

    def _spec_at(self, magnitude: float | None, sites: Any) -> NoiseSpec:
        spec = self.spec if magnitude is None else self.spec.with_magnitude(magnitude)
        return spec if sites is None else spec.at_sites(sites)

    def describe(self) -> dict[str, Any]:
        """What a reader needs to reproduce or compare a result: spec, seed, data, calibration."""
        return {"spec": self.spec.to_dict(), "seed": self.tree.describe(), "repeats": self.repeats,
                "samples": len(self.y), "chunk_size": self.chunk_size, "device": str(self.device),
                "clean_accuracy": self.clean,
                "calibration": None if self.calibration is None else self.calibration.to_dict()}

    # ------------------------------------------------------------------ measuring
    def accuracy(self, magnitudes: Sequence[float | None] | None = None, *, sites: Any = None,
                 threshold: float | None = None, sample_scale: SampleScale | None = None,
                 time: float | None = None) -> list[Measurement]:
        """One ``Measurement`` per magnitude (None: the spec as it is), with one value per repeat.

        ``sites`` overrides the spec's selection; ``threshold`` stops a level early once its accuracy
        is clearly above or below it; ``sample_scale`` draws per-sample sigma factors per repeat;
        ``time`` (seconds after programming) drifts the hardware model of every repeat to that time.
        """
        levels = [None] if magnitudes is None else list(magnitudes)
        if time is not None and self.spec.hardware is None:
            raise NoraError("drift times need a hardware model (--analog) in the noise specification")
        results = []
        for level in levels:
            spec = self._spec_at(level, sites)
            site = self._split_site(spec) if sample_scale is None else None
            if site is not None:
                results.append(self._split(spec, site, level, threshold))
            else:
                results.append(self._full(spec, level, threshold, sample_scale, time))
            if self.on_measured is not None:
                self.on_measured(results[-1])
        return results

    def summary(self, magnitudes: Sequence[float | None] | None = None, *, confidence: float = 0.95,
                **options: Any) -> list[dict[str, Any]]:
        """``accuracy`` as table rows (mean, std, CI, values), each with the repetition cost."""
        rows = []
        for m in self.accuracy(magnitudes, **options):
            spec = self._spec_at(m.sigma, options.get("sites"))
            time = {"time_s": options["time"]} if options.get("time") is not None else {}
            rows.append({**m.row(confidence), **time, "path": m.path, "cost": self.cost(spec)})
        return rows

    @torch.no_grad()
    def logits(self, magnitude: float | None = None, repeat: int = 0, *, sites: Any = None) -> torch.Tensor:
        """The outputs of noise realisation ``repeat``, in the data's original sample order."""
        spec = self._spec_at(magnitude, sites)
        self.injector.set_spec(spec)
        self.injector.reseed(self.repeat_node(repeat))
        outs = [self.model(self.x[s:s + self.chunk_size].to(self.device)) for s in range(0, len(self.y), self.chunk_size)]
        out = torch.cat(outs)
        restored = torch.empty_like(out)
        restored[self.order.to(out.device)] = out
        return restored

    # ------------------------------------------------------------------ full forward
    @torch.no_grad()
    def _full(self, spec: NoiseSpec, level: float | None, threshold: float | None,
              sample_scale: SampleScale | None, time: float | None = None) -> Measurement:
        self.injector.set_spec(spec)
        tally = Tally(1, self.repeats)
        try:
            if spec.weight is not None or spec.hardware is not None:
                self._full_per_repeat(tally, sample_scale, time)
            else:
                self._full_packed(spec, tally, threshold, sample_scale)
        finally:
            self.injector.sigma_scale = 1.0
        samples = tally.samples[0]
        return Measurement(level, [c / samples for c in tally.correct[0]], samples, samples >= len(self.y),
                           FULL_FORWARD)

    def _chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.y), self.chunk_size):
            yield (self.x[start:start + self.chunk_size].to(self.device, non_blocking=True),
                   self.y[start:start + self.chunk_size].to(self.device, non_blocking=True))

    def _full_packed(self, spec: NoiseSpec, tally: Tally, threshold: float | None,
                     sample_scale: SampleScale | None) -> None:
        """Chunk after chunk, every repeat group; each group keeps its own streams across chunks."""
        tiles = self._tiles(spec)
        groups = []
        for first in range(0, self.repeats, tiles):
            members = list(range(first, min(first + tiles, self.repeats)))
            self.injector.use_streams([self.repeat_node(r) for r in members])
            scales = [self.repeat_node(r).child("sample-scale").generator() for r in members] if sample_scale else []
            groups.append((members, self.injector.streams, scales))
        for xb, yb in self._chunks():
            for members, streams, scales in groups:
                self.injector.streams = streams
                count = len(members)
                batch = xb if count == 1 else xb.repeat(count, *([1] * (xb.dim() - 1)))
                if sample_scale is not None:
                    self.injector.sigma_scale = torch.cat([sample_scale(g, len(yb)) for g in scales]).to(self.device)
                pred = self.model(batch).argmax(1).view(count, -1)
                for r, correct in zip(members, (pred == yb).sum(1).tolist()):
                    tally.correct[0][r] += correct
            tally.samples[0] += len(yb)
            if not tally.undecided(threshold):
                break

    def _full_per_repeat(self, tally: Tally, sample_scale: SampleScale | None, time: float | None) -> None:
        """Weight noise and hardware draw per forward pass: one repeat after another, all chunks each.

        Repeat r is one programmed chip (the same at every magnitude and time), read at ``time``.
        """
        for r in range(self.repeats):
            self.injector.reseed(self.repeat_node(r))
            if time is not None:
                drift = getattr(self.injector.hardware, "set_time", None)
                if drift is None:
                    raise NoraError(f"the hardware model {type(self.injector.hardware).__name__} does not drift over time")
                drift(time)
            scale = self.repeat_node(r).child("sample-scale").generator() if sample_scale else None
            samples = 0
            for xb, yb in self._chunks():
                if scale is not None:
                    self.injector.sigma_scale = sample_scale(scale, len(yb)).to(self.device)
                tally.correct[0][r] += int((self.model(xb).argmax(1) == yb).sum())
                samples += len(yb)
            tally.samples[0] = samples

    def _tiles(self, spec: NoiseSpec) -> int:
        if not self.pack:
            return 1
        peak = max((s.numel for s in self.sites), default=1)
        return max(1, min(self.repeats, self.max_batch_elements // max(1, self.chunk_size * peak)))

    # ------------------------------------------------------------------ split (suffix only)
    def _split_site(self, spec: NoiseSpec) -> int | None:
        """The one noisy site when the split backend can evaluate ``spec`` exactly, else None."""
        if not self.split or spec.weight is not None or spec.hardware is not None:
            return None
        plan = resolve_plan(spec, self.sites)
        noisy = [i for i, p in enumerate(plan) if p is not None]
        if len(noisy) != 1 or plan[noisy[0]].effective is None:
            return None
        chain = self.chain()
        if chain is None or noisy[0] not in chain.cuts:
            return None
        return noisy[0]

    @torch.no_grad()
    def _split(self, spec: NoiseSpec, index: int, level: float | None, threshold: float | None) -> Measurement:
        chain = self.chain()
        site = self.sites[index]
        entry = resolve_plan(spec, self.sites)[index]
        single = entry.effective
        factor = 1.0
        if single.relative is not None:
            if self.calibration is None:
                raise NoraError("relative sigma needs calibration data")
            factor = self.calibration.reference[index]
        tiles = self._tiles(spec)
        streams = [make_stream(self.repeat_node(r).child("activation"), mode_of(spec)) for r in range(self.repeats)]
        tally = Tally(1, self.repeats)
        start = 0
        # The chain's steps are the model's own modules: the handle's hooks must stay quiet here.
        self.injector.enabled = False
        try:
            if self._cache is None:
                self._cache = ActivationCache(chain, self.x, self.chunk_size, self.cache_bytes, self.device)
            cut = chain.cuts[index]
            if self._cache.kept is None or self._cache.cut != cut:
                self._cache.move_to(cut, site.numel)
            for clean in self._cache.chunks():
                batch = clean.shape[0]
                labels = self.y[start:start + batch].to(self.device)
                start += batch
                for first in range(0, self.repeats, tiles):
                    group = list(range(first, min(first + tiles, self.repeats)))
                    count = len(group)
                    tiled = clean.repeat(count, *([1] * (clean.dim() - 1))) if count > 1 else clean.clone()

                    def draw(tiled=tiled, group=group):
                        # Draws fill a contiguous tensor in logical order, as the handle's do.
                        z = torch.empty_like(tiled, memory_format=torch.contiguous_format)
                        for r, part in zip(group, z.chunk(len(group))):
                            streams[r].normal_(part)
                        return z

                    noisy = single.perturb(tiled, draw, factor, inplace=True)
                    pred = chain.run(noisy, cut).argmax(1).view(count, batch)
                    for r, correct in zip(group, (pred == labels).sum(1).tolist()):
                        tally.correct[0][r] += correct
                tally.samples[0] += batch
                if not tally.undecided(threshold):
                    break
        finally:
            self.injector.enabled = True
        return Measurement(level, [c / tally.samples[0] for c in tally.correct[0]], tally.samples[0],
                           tally.samples[0] >= len(self.y), SPLIT)


__all__ = ["DEFAULT_CHUNK", "Engine", "FULL_FORWARD", "Measurement", "SPLIT", "Tally", "check_repeats"]
