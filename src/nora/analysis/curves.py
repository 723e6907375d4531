"""Accuracy-vs-sigma curves on a log grid, streamed over the test set in chunks.

An *evaluator* measures accuracy at several sigmas for one placement of noise; ``measure(noise,
sigmas, threshold)`` returns one ``Measurement`` per sigma with R per-repeat accuracies. Two exist:
``InjectorEvaluator`` here (full forward with the ``NoiseInjector``: global noise, any placement,
any model) and ``SplitEvaluator`` in ``nora.analysis.walk`` (noise at one site of a chain model,
running only the layers after it). Both stream the test set in chunks, so memory stays bounded, and
both pack the R repeats of a chunk into one larger batch when it fits ``max_batch_elements``.

Every sigma of one ``measure`` call sees the same standard-normal draws (common random numbers), so
a curve is smooth in sigma and differences between sigmas are not noise-on-noise. With a
``threshold`` the measurement stops early once every sigma's accuracy is clearly on one side of it:
the adaptive midpoint search uses this to decide bisection steps on a few hundred samples.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from nora.analysis.midpoint import Measurement, Midpoint, midpoint
from nora.analysis.stats import summarize
from nora.errors import NoraError
from nora.noise.models import GaussianCombined, NoiseModel
from nora.sim.injector import NoiseInjector, injector_of

#: Elements (floats per site activation) in one forward call of packed repeats; about 8 MB.
DEFAULT_BATCH_ELEMENTS = 1 << 21
DEFAULT_CHUNK = 500
#: A running accuracy is "clearly" on one side of a threshold beyond this many standard errors.
DECISION_Z = 4.0


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


# ------------------------------------------------------------------------------ shared machinery
def clean_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   chunk_size: int = DEFAULT_CHUNK) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), chunk_size):
            correct += int((forward(x[start:start + chunk_size]).argmax(1) == y[start:start + chunk_size]).sum())
    return correct / max(len(y), 1)


class Tally:
    """Correct counts per (sigma, repeat) as chunks stream by, and the early-stopping rule."""

    def __init__(self, sigmas: Sequence[float], repeats: int):
        self.sigmas = [float(s) for s in sigmas]
        self.correct = np.zeros((len(self.sigmas), repeats), dtype=np.int64)
        self.samples = np.zeros(len(self.sigmas), dtype=np.int64)

    def add(self, index: int, repeat: int, correct: int) -> None:
        self.correct[index, repeat] += correct

    def seen(self, indices: Sequence[int], samples: int) -> None:
        """``samples`` more test samples were counted for the sigmas at ``indices``."""
        self.samples[list(indices)] += samples

    def undecided(self, threshold: float | None) -> list[int]:
        """Sigmas whose accuracy is not yet clearly above or below ``threshold`` (all when None)."""
        if threshold is None:
            return list(range(len(self.sigmas)))
        n = np.maximum(self.samples, 1)
        p = self.correct.sum(axis=1) / (self.correct.shape[1] * n)
        # Repeats share their inputs, so the standard error counts samples, not samples x repeats.
        se = np.sqrt(np.maximum(p * (1 - p), 1.0 / n) / n)
        return [i for i in range(len(p)) if self.samples[i] == 0 or abs(p[i] - threshold) <= DECISION_Z * se[i]]

    def measurements(self, total: int) -> list[Measurement]:
        return [Measurement(s, [float(c) / max(int(self.samples[i]), 1) for c in self.correct[i]],
                            int(self.samples[i]), int(self.samples[i]) >= total)
                for i, s in enumerate(self.sigmas)]


def check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise NoraError(f"repeats must be an integer >= 1, got {repeats!r}")
    return repeats


def tiles_per_call(chunk: int, peak_numel: int, max_batch_elements: int) -> int:
    """How many (sigma, repeat) copies of a chunk one forward call may hold."""
    return max(1, max_batch_elements // max(1, chunk * peak_numel))


def calibration_reference(model: nn.Module, x: torch.Tensor, statistic: str, *, chunk_size: int,
                          samples: int = 4000, **site_options: Any) -> list[float]:
    """Per-site clean output scale for relative sigma, measured as the injector does on the first samples."""
    from nora.noise.models import GaussianAdditive

    batches = (x[i:i + chunk_size] for i in range(0, min(samples, len(x)), chunk_size))
    with NoiseInjector(model, GaussianAdditive(0.0), example_input=x[:2], **site_options) as injector:
        return injector.calibrate(batches, statistic)


# ------------------------------------------------------------------------------ full forward
class InjectorEvaluator:
    """Accuracy with the ``NoiseInjector`` at a placement of sites: the path for any model.

    Use as a context manager: the injector stays attached to the model until the block ends.
    Repeats are packed into one batch (tile r of the batch is repeat r); every sigma restarts the
    injector's stream at ``seed``, so all sigmas see the same draws.
    """

    path = "full-forward"

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, repeats: int = 5, seed: int = 0,
                 chunk_size: int = DEFAULT_CHUNK, max_batch_elements: int = DEFAULT_BATCH_ELEMENTS,
                 injector_options: dict[str, Any] | None = None, relative: str | None = None):
        if injector_of(model) is not None:
            raise NoraError("the model already has noise attached; detach it before a noisy evaluation")
        self.model, self.x, self.y = model, x, y
        self.repeats = check_repeats(repeats)
        self.seed = seed
        self.chunk_size = chunk_size
        options = dict(injector_options or {})
        from nora.noise.models import GaussianAdditive

        self.injector = NoiseInjector(model, GaussianAdditive(0.0), example_input=x[:2], seed=seed, when="eval",
                                      **options)
        try:
            if relative is not None:
                self.injector.calibrate((x[i:i + chunk_size] for i in range(0, min(4000, len(x)), chunk_size)),
                                        relative)
            peak = max(s.numel for s in self.injector.sites)
        except BaseException:
            self.injector.detach()
            raise
        self.tiles = min(self.repeats, tiles_per_call(chunk_size, peak, max_batch_elements))

    def __enter__(self) -> InjectorEvaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.injector.detach()

    def measure(self, noise: NoiseModel, sigmas: Sequence[float], threshold: float | None = None) -> list[Measurement]:
        results = []
        was_training = self.model.training
        self.model.eval()
        try:
            for sigma in sigmas:
                self.injector.set_noise(noise.with_magnitude(sigma))
                self.injector.reseed(self.seed)
                results += self._one(float(sigma), threshold)
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def _one(self, sigma: float, threshold: float | None) -> list[Measurement]:
        tally = Tally([sigma], self.repeats)
        for start in range(0, len(self.y), self.chunk_size):
            xb, yb = self.x[start:start + self.chunk_size], self.y[start:start + self.chunk_size]
            for first in range(0, self.repeats, self.tiles):
                count = min(self.tiles, self.repeats - first)
                pred = self.model(xb.repeat(count, *([1] * (xb.dim() - 1)))).argmax(1).view(count, -1)
                for t, correct in enumerate((pred == yb).sum(1).tolist()):
                    tally.add(0, first + t, correct)
            tally.seen([0], len(yb))
            if not tally.undecided(threshold):
                break
        return tally.measurements(len(self.y))


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
    noise: NoiseModel,
    sigmas: Sequence[float],
    *,
    num_classes: int,
    sites: Any = None,
    injector_options: dict[str, Any] | None = None,
    repeats: int = 5,
    seed: int = 0,
    confidence: float = 0.95,
    chunk_size: int = DEFAULT_CHUNK,
    max_batch_elements: int = DEFAULT_BATCH_ELEMENTS,
    label: str = "",
    clean: float | None = None,
) -> Curve:
    """Accuracy at each sigma of a grid with noise at ``sites`` (None: every site), R repeats each."""
    sigmas = check_grid(sigmas)
    chance = chance_level(num_classes)
    options = {**(injector_options or {}), "sites": sites}
    was_training = model.training
    model.eval()
    try:
        if clean is None:
            clean = clean_accuracy(model, x, y, chunk_size)
        with InjectorEvaluator(model, x, y, repeats=repeats, seed=seed, chunk_size=chunk_size,
                               max_batch_elements=max_batch_elements, injector_options=options,
                               relative=noise.relative) as evaluator:
            measured = evaluator.measure(noise, sigmas)
    finally:
        model.train(was_training)
    rows = [m.row(confidence) for m in measured]
    mid = midpoint(sigmas, [r["mean"] for r in rows], clean, chance)
    return Curve(label or f"{noise.kind}, sites={'all' if sites is None else sites}", rows, clean, chance, mid)


def combined_grid(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: GaussianCombined,
    cells: Sequence[Sequence[tuple[float, float]]],
    **options: Any,
) -> list[list[dict[str, Any]]]:
    """Mean accuracy (with spread) for a matrix of (amplitude, ratio) cells of combined noise."""
    if not isinstance(noise, GaussianCombined):
        raise NoraError("a (amplitude, ratio) heat map needs combined noise (--noise combined)")
    confidence = options.pop("confidence", 0.95)
    sites = options.pop("sites", None)
    injector_options = {**options.pop("injector_options", {}), "sites": sites}
    was_training = model.training
    model.eval()
    try:
        with InjectorEvaluator(model, x, y, injector_options=injector_options, relative=noise.relative,
                               **options) as evaluator:
            matrix = []
            for row in cells:
                out = []
                for amplitude, ratio in row:
                    (m,) = evaluator.measure(dataclasses.replace(noise, ratio=ratio), [amplitude])
                    out.append({"amplitude": amplitude, "ratio": ratio, **summarize(m.values, confidence)})
                matrix.append(out)
    finally:
        model.train(was_training)
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
