"""The midpoint noise level mu (methods.md section 5): where accuracy falls halfway to chance.

Accuracy under noise at one site falls from the clean accuracy to chance in a sigmoid-like way in
log10(sigma). mu is the centre of the sigmoid

    A(s) = A_min + (A_max - A_min) / (1 + exp(k * (log10 s - log10 mu)))

fitted with scipy's ``curve_fit`` with A_min fixed to chance and A_max to the clean accuracy. When
the fit fails (or lands outside the measured range) mu comes from linear interpolation in log10 sigma
between the two points that bracket the midpoint accuracy. A curve that never crosses the midpoint
inside the measured range gets no mu, and says on which side it lies.

``search_midpoint`` finds mu without a dense grid: a coarse scan and bisection on cheap, early-stopped
measurements, then a few full measurements around the crossing for the fit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from nora.measure.engine import Measurement
from nora.stats import summarize
from nora.errors import NoraError

FIT = "fit"
INTERPOLATED = "interpolated"
ABOVE_RANGE = "above_range"
BELOW_RANGE = "below_range"
NO_DROP = "no_drop"


@dataclasses.dataclass(frozen=True)
class Midpoint:
    """mu (None when the curve gives none), how it was found, and why not when it was not."""

    mu: float | None
    status: str
    slope: float | None = None
    level: float | None = None
    message: str = ""
    #: Root-mean-square distance of the measured accuracies from the fitted sigmoid: a curve that
    #: is not sigmoid-like (multiplicative noise often levels off above chance) shows here.
    fit_rmse: float | None = None

    @property
    def found(self) -> bool:
        return self.mu is not None

    @property
    def log10_mu(self) -> float | None:
        return None if self.mu is None else math.log10(self.mu)

    def to_dict(self) -> dict[str, Any]:
        return {"mu": self.mu, "log10_mu": self.log10_mu, "status": self.status, "slope": self.slope,
                "level": self.level, "fit_rmse": self.fit_rmse, "message": self.message}


def sigmoid(u: np.ndarray, slope: float, log_mu: float, low: float, high: float) -> np.ndarray:
    """Accuracy at log10 sigma ``u``; decreasing for slope > 0."""
    z = np.clip(slope * (np.asarray(u, dtype=float) - log_mu), -60.0, 60.0)
    return low + (high - low) / (1.0 + np.exp(z))


def midpoint_level(clean: float, chance: float) -> float:
    return 0.5 * (clean + chance)


def _check_curve(sigmas: Sequence[float], accuracies: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sigmas, dtype=float)
    a = np.asarray(accuracies, dtype=float)
    if s.ndim != 1 or s.shape != a.shape:
        raise NoraError(f"a curve needs one accuracy per sigma, got {s.size} sigmas and {a.size} accuracies")
    if s.size < 1:
        raise NoraError("a midpoint needs at least one point on the curve")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise NoraError("every sigma of a curve must be a finite number > 0")
    if np.any(np.diff(s) <= 0):
        raise NoraError("the sigmas of a curve must be strictly increasing")
    return s, a


def interpolate_crossing(sigmas: Sequence[float], accuracies: Sequence[float], level: float) -> float | None:
    """Sigma where the curve first falls below ``level``, linear in log10 sigma; None if it never does."""
    u = np.log10(np.asarray(sigmas, dtype=float))
    a = np.asarray(accuracies, dtype=float)
    for i in range(len(a) - 1):
        if a[i] >= level > a[i + 1]:
            t = (a[i] - level) / (a[i] - a[i + 1])
            return float(10 ** (u[i] + t * (u[i + 1] - u[i])))
    return None


def midpoint(sigmas: Sequence[float], accuracies: Sequence[float], clean: float, chance: float,
             samples: Sequence[int] | None = None) -> Midpoint:
    """mu of one accuracy-vs-sigma curve (sigmas strictly increasing).

    ``samples`` (test samples behind each point) weights the fit: a point measured on fewer samples
    is noisier, and its residual counts less (standard error ~ 1/sqrt(samples)).
    """
    s, a = _check_curve(sigmas, accuracies)
    if samples is not None and (len(samples) != len(s) or min(samples) < 1):
        raise NoraError("samples must give a positive count for every point of the curve")
    if not clean > chance:
        return Midpoint(None, NO_DROP, message=f"clean accuracy {clean:.4f} is not above chance {chance:.4f}: "
                                               "there is no midpoint to find")
    level = midpoint_level(clean, chance)
    if np.all(a >= level):
        return Midpoint(None, ABOVE_RANGE, level=level,
                        message=f"accuracy stays above the midpoint {level:.3f} up to sigma {s[-1]:g}: mu > {s[-1]:g}")
    if a[0] < level:
        return Midpoint(None, BELOW_RANGE, level=level,
                        message=f"accuracy is already below the midpoint {level:.3f} at sigma {s[0]:g}: mu < {s[0]:g}")
    crossing = interpolate_crossing(s, a, level)
    u = np.log10(s)
    weights = None if samples is None else 1.0 / np.sqrt(np.asarray(samples, dtype=float))
    fitted = _fit(u, a, clean, chance, math.log10(crossing), weights)
    if fitted is not None:
        slope, log_mu = fitted
        rmse = float(np.sqrt(np.mean((sigmoid(u, slope, log_mu, chance, clean) - a) ** 2)))
        return Midpoint(float(10**log_mu), FIT, slope=slope, level=level, fit_rmse=rmse)
    return Midpoint(crossing, INTERPOLATED, level=level,
                    message="sigmoid fit failed; linear interpolation in log10 sigma")


def _fit(u: np.ndarray, a: np.ndarray, clean: float, chance: float, start: float,
         errors: np.ndarray | None) -> tuple[float, float] | None:
    """(slope, log10 mu) of the sigmoid with fixed asymptotes, or None when the fit is not usable."""
    from scipy.optimize import OptimizeWarning, curve_fit

    def model(x, slope, log_mu):
        return sigmoid(x, slope, log_mu, chance, clean)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (slope, log_mu), _ = curve_fit(model, u, a, p0=(4.0, start), sigma=errors,
                                           bounds=([1e-3, u[0] - 1], [1e3, u[-1] + 1]), maxfev=2000)
    except (RuntimeError, ValueError):
        return None
    if not (math.isfinite(slope) and math.isfinite(log_mu)) or not u[0] <= log_mu <= u[-1]:
        return None
    return float(slope), float(log_mu)


def aggregate(midpoints: Sequence[Midpoint], confidence: float = 0.95) -> dict[str, Any]:
    """mu over seeds: mean and spread of mu and of log10 mu over the seeds that found one."""
    found = [m.mu for m in midpoints if m.found]
    out: dict[str, Any] = {"n": len(midpoints), "n_found": len(found),
                           "statuses": sorted({m.status for m in midpoints})}
    if not found:
        out.update(mu_mean=None, mu_std=None, log10_mu_mean=None, log10_mu_std=None)
        return out
    mus = summarize(found, confidence)
    logs = summarize([math.log10(m) for m in found], confidence)
    out.update(mu_mean=mus["mean"], mu_std=mus["std"], mu_ci_low=mus["ci_low"], mu_ci_high=mus["ci_high"],
               log10_mu_mean=logs["mean"], log10_mu_std=logs["std"], values=found)
    return out


# ------------------------------------------------------------------------------ adaptive search
#: ``measure(sigmas, threshold)``: accuracies at ``sigmas``; with a threshold the measurement may stop
#: early once every sigma is clearly above or below it.
Measure = Callable[[Sequence[float], float | None], list[Measurement]]


def search_midpoint(
    measure: Measure,
    lo: float,
    hi: float,
    clean: float,
    chance: float,
    *,
    scan_per_decade: float = 1.0,
    bracket_decades: float = 0.25,
    refine_offsets: Sequence[float] = (-0.3, -0.1, 0.1, 0.3),
) -> tuple[Midpoint, list[Measurement]]:
    """mu inside [lo, hi] from few measurements; returns it with every measurement made.

    1. A coarse scan (``scan_per_decade``) with early-stopped measurements finds the first
       decade where the accuracy falls below the midpoint (as ``interpolate_crossing`` does on a
       dense grid); far from mu a few hundred samples decide the side. A curve that does not cross
       inside the range is reported as such.
    2. Bisection in log10 sigma, also early-stopped, narrows that bracket to ``bracket_decades``.
    3. Full measurements at ``refine_offsets`` decades around the interpolated crossing feed the
       sigmoid fit together with every earlier point (the same definition as on a dense grid).
    """
    if not 0 < lo < hi:
        raise NoraError(f"the sigma range must satisfy 0 < low < high, got {lo:g} .. {hi:g}")
    level = midpoint_level(clean, chance)
    made: list[Measurement] = []

    def run(sigmas: Sequence[float], threshold: float | None) -> list[Measurement]:
        got = measure(list(sigmas), threshold)
        made.extend(got)
        return got

    if not clean > chance:
        return midpoint([lo, hi], [clean, clean], clean, chance), made
    u_lo, u_hi = math.log10(lo), math.log10(hi)
    steps = max(1, math.ceil((u_hi - u_lo) * scan_per_decade - 1e-9))
    scan = run([10 ** (u_lo + (u_hi - u_lo) * i / steps) for i in range(steps + 1)], level)
    bracket = next((i for i in range(steps) if scan[i].mean >= level > scan[i + 1].mean), None)
    if bracket is None:
        return _final(made, clean, chance), made
    (u_lo, a_lo), (u_hi, a_hi) = [(math.log10(m.sigma), m.mean) for m in scan[bracket:bracket + 2]]
    while u_hi - u_lo > bracket_decades:
        u_mid = 0.5 * (u_lo + u_hi)
        (m,) = run([10**u_mid], level)
        if m.mean >= level:
            u_lo, a_lo = u_mid, m.mean
        else:
            u_hi, a_hi = u_mid, m.mean
    centre = u_lo + (a_lo - level) / (a_lo - a_hi) * (u_hi - u_lo)
    run(sorted(10 ** (centre + d) for d in refine_offsets), None)
    return _final(made, clean, chance), made


def _final(made: Sequence[Measurement], clean: float, chance: float) -> Midpoint:
    """The midpoint of every measured point, the latest measurement winning at a repeated sigma."""
    by_sigma: dict[float, Measurement] = {}
    for m in made:
        if m.sigma not in by_sigma or m.samples >= by_sigma[m.sigma].samples:
            by_sigma[m.sigma] = m
    ordered = sorted(by_sigma.values(), key=lambda m: m.sigma)
    return midpoint([m.sigma for m in ordered], [m.mean for m in ordered], clean, chance,
                    [max(m.samples, 1) for m in ordered])
