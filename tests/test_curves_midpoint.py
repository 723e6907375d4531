"""Log grids, the midpoint noise level (fit, interpolation, out of range), its adaptive search, curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nora import GaussianAdditive, GaussianCombined, NoraError
from nora.analysis.curves import (
    accuracy_curve,
    chance_level,
    check_grid,
    combined_grid,
    log_grid,
    mul_add_cells,
)
from nora.analysis.midpoint import (
    ABOVE_RANGE,
    BELOW_RANGE,
    FIT,
    INTERPOLATED,
    NO_DROP,
    Measurement,
    aggregate,
    interpolate_crossing,
    midpoint,
    search_midpoint,
    sigmoid,
)
from nora.measure import Tally

CLEAN, CHANCE = 0.98, 0.1


def test_log_grid_is_the_research_grid():
    grid = log_grid(1e-2, 1e2, 4)
    assert len(grid) == 17
    assert grid[0] == 1e-2 and grid[-1] == 1e2
    assert grid[4] == pytest.approx(0.1) and grid[8] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("lo,hi,message", [
    (1.0, 1.0, "empty or not increasing"), (10.0, 1.0, "empty or not increasing"),
    (0.0, 1.0, "start above 0"), (-1.0, 1.0, "start above 0"), (1e-2, float("inf"), "finite"),
])
def test_bad_sigma_range(lo, hi, message):
    with pytest.raises(NoraError, match=message):
        log_grid(lo, hi, 4)


def test_bad_grids():
    with pytest.raises(NoraError, match="points per decade"):
        log_grid(1e-2, 1e2, 0)
    with pytest.raises(NoraError, match="empty"):
        check_grid([])
    with pytest.raises(NoraError, match="strictly increasing"):
        check_grid([0.1, 1.0, 1.0])
    with pytest.raises(NoraError, match="> 0"):
        check_grid([0.0, 1.0])


def test_chance_level():
    assert chance_level(10) == 0.1
    with pytest.raises(NoraError, match="classes"):
        chance_level(1)


def _sigmoid_curve(mu: float, slope: float = 5.0, per_decade: int = 4):
    sigmas = log_grid(1e-2, 1e3, per_decade)
    return sigmas, list(sigmoid(np.log10(sigmas), slope, math.log10(mu), CHANCE, CLEAN))


def test_fit_recovers_mu_of_a_sigmoid():
    sigmas, acc = _sigmoid_curve(0.6)
    result = midpoint(sigmas, acc, CLEAN, CHANCE)
    assert result.status == FIT
    assert result.mu == pytest.approx(0.6, rel=1e-4)
    assert result.slope == pytest.approx(5.0, rel=1e-3)
    assert result.fit_rmse < 1e-6


def test_fit_tolerates_measurement_noise():
    sigmas, acc = _sigmoid_curve(3.0)
    noisy = np.array(acc) + np.random.default_rng(0).normal(0, 0.01, len(acc))
    result = midpoint(sigmas, noisy, CLEAN, CHANCE)
    assert abs(math.log10(result.mu / 3.0)) < 0.03


def test_interpolation_fallback_when_the_fit_fails(monkeypatch):
    import scipy.optimize

    def broken(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "curve_fit", broken)
    sigmas = [0.1, 1.0, 10.0]
    acc = [0.9, 0.7, 0.2]  # midpoint level 0.54 lies between 1 and 10: 0.7 - 0.32 * (0.5 / ...)
    result = midpoint(sigmas, acc, CLEAN, CHANCE)
    assert result.status == INTERPOLATED
    expected = 10 ** (0 + (0.7 - 0.54) / (0.7 - 0.2))
    assert result.mu == pytest.approx(expected)
    assert interpolate_crossing(sigmas, acc, 0.54) == pytest.approx(expected)


def test_curve_that_never_crosses_is_reported():
    above = midpoint([0.1, 1.0, 10.0], [0.97, 0.9, 0.8], CLEAN, CHANCE)
    assert above.status == ABOVE_RANGE and above.mu is None
    assert "mu > 10" in above.message
    below = midpoint([0.1, 1.0, 10.0], [0.3, 0.2, 0.1], CLEAN, CHANCE)
    assert below.status == BELOW_RANGE and "mu < 0.1" in below.message
    flat = midpoint([0.1, 1.0], [0.1, 0.1], 0.1, 0.1)
    assert flat.status == NO_DROP and not flat.found


def test_bad_curves():
    with pytest.raises(NoraError, match="strictly increasing"):
        midpoint([1.0, 0.5], [0.9, 0.1], CLEAN, CHANCE)
    with pytest.raises(NoraError, match="one accuracy per sigma"):
        midpoint([0.1, 1.0], [0.9], CLEAN, CHANCE)


def test_aggregate_over_seeds():
    mids = [midpoint(*_sigmoid_curve(mu), CLEAN, CHANCE) for mu in (0.5, 0.6, 0.7)]
    mids.append(midpoint([0.1, 1.0], [0.95, 0.9], CLEAN, CHANCE))  # above range: counted, not averaged
    agg = aggregate(mids)
    assert agg["n"] == 4 and agg["n_found"] == 3
    assert agg["mu_mean"] == pytest.approx(0.6, rel=1e-3)
    assert agg["mu_std"] == pytest.approx(0.1, rel=1e-2)
    assert set(agg["statuses"]) == {FIT, ABOVE_RANGE}


def _oracle(mu: float, slope: float = 4.0, total: int = 10_000):
    """Exact sigmoid accuracies; with a threshold, measurements far from it stop after 500 samples."""
    def measure(sigmas, threshold):
        out = []
        for s in sigmas:
            a = float(sigmoid(math.log10(s), slope, math.log10(mu), CHANCE, CLEAN))
            early = threshold is not None and abs(a - threshold) > 0.1
            out.append(Measurement(s, [a], 500 if early else total, not early))
        return out

    return measure


@pytest.mark.parametrize("mu", [0.05, 0.6, 7.0, 300.0])
def test_adaptive_search_finds_mu_with_few_measurements(mu):
    measure = _oracle(mu)
    result, made = search_midpoint(measure, 1e-2, 1e4, CLEAN, CHANCE)
    assert result.status == FIT
    assert abs(math.log10(result.mu / mu)) < 0.01
    full = [m for m in made if m.complete]
    assert len(full) <= 6  # the dense research grid would measure 25 points fully
    assert len(made) <= 15


def test_adaptive_search_reports_out_of_range():
    measure = _oracle(1e5)
    result, made = search_midpoint(measure, 1e-2, 1e2, CLEAN, CHANCE)
    assert result.status == ABOVE_RANGE and "mu > 100" in result.message
    assert all(not m.complete for m in made)  # decided on the cheap scan alone
    measure = _oracle(1e-4)
    assert search_midpoint(measure, 1e-2, 1e2, CLEAN, CHANCE)[0].status == BELOW_RANGE


def test_tally_stops_only_when_clearly_decided():
    tally = Tally(2, repeats=2)
    assert tally.undecided(0.5) == [0, 1]  # nothing seen yet
    for r in range(2):
        tally.correct[0][r] += 490
        tally.correct[1][r] += 260
    tally.samples[0] += 500
    tally.samples[1] += 500
    assert tally.undecided(0.5) == [1]  # 0.98 is far above 0.5; 0.52 is not decided on 500 samples
    assert tally.undecided(None) == [0, 1]


# ------------------------------------------------------------------------------ curves on a model
def _toy_task(n=600, seed=0):
    """A linearly separable 3-class problem and a linear model that solves it."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.arange(n) % 3
    x = centres[y] + 0.3 * torch.randn(n, 2, generator=g)
    model = nn.Sequential(nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(centres)
        model[0].bias.zero_()
    model.num_classes = 3
    return model, x, y


def test_accuracy_curve_falls_from_clean_to_chance():
    model, x, y = _toy_task()
    curve = accuracy_curve(model, x, y, GaussianAdditive(0.0), log_grid(1e-2, 1e3, 2), num_classes=3,
                           repeats=3, seed=0, chunk_size=128)
    means = [r["mean"] for r in curve.rows]
    assert curve.clean == 1.0 and curve.chance == pytest.approx(1 / 3)
    assert means[0] == 1.0
    assert abs(means[-1] - 1 / 3) < 0.06
    assert curve.midpoint.status == FIT and 0.3 < curve.midpoint.mu < 30
    assert all(r["n"] == 3 and r["ci_low"] <= r["mean"] <= r["ci_high"] for r in curve.rows)


def test_curve_at_chosen_sites_differs_from_global():
    model, x, y = _toy_task()
    grid = [0.5, 2.0, 8.0]
    everywhere = accuracy_curve(model, x, y, GaussianAdditive(0.0), grid, num_classes=3, repeats=3)
    logits_only = accuracy_curve(model, x, y, GaussianAdditive(0.0), grid, num_classes=3, repeats=3, sites=[1])
    # Input noise is multiplied by the weights (norm 3): global noise hurts more than at the logits alone.
    assert everywhere.rows[1]["mean"] < logits_only.rows[1]["mean"] - 0.05
    with pytest.raises(NoraError, match="out of range"):
        accuracy_curve(model, x, y, GaussianAdditive(0.0), grid, num_classes=3, sites=[5])


def test_curve_points_equal_the_engine_at_the_same_seed():
    from nora.measure import Engine
    from nora.sim import NoiseSpec

    model, x, y = _toy_task(n=3000)
    curve = accuracy_curve(model, x, y, GaussianAdditive(0.0), [3.0], num_classes=3, repeats=4, seed=11)
    with Engine(model, x, y, NoiseSpec(activation=GaussianAdditive(3.0)), seed=11, repeats=4) as engine:
        (direct,) = engine.accuracy()
    assert curve.rows[0]["values"] == direct.values


def test_packed_repeats_measure_exactly_the_same_accuracy():
    model, x, y = _toy_task(n=3000)
    packed = accuracy_curve(model, x, y, GaussianAdditive(0.0), [2.0, 4.0], num_classes=3, repeats=4, seed=3)
    single = accuracy_curve(model, x, y, GaussianAdditive(0.0), [2.0, 4.0], num_classes=3, repeats=4, seed=3,
                            max_batch_elements=1)  # one repeat per forward call
    # Every tile of a packed batch draws from its own repeat's stream: packing changes no number.
    assert [r["values"] for r in packed.rows] == [r["values"] for r in single.rows]
    assert len(set(packed.rows[0]["values"])) > 1  # and the repeats are different draws


def test_mul_add_cells_map_onto_amplitude_and_ratio():
    cells = mul_add_cells([0.1, 1.0], [0.0, 0.3])
    amplitude, ratio = cells[1][0]
    noise = GaussianCombined(amplitude, ratio)
    assert noise.sigma_mul == pytest.approx(0.1) and noise.sigma_add == pytest.approx(0.3)
    assert cells[0][1] == (1.0, 0.0)


def test_combined_grid_needs_combined_noise_and_orders_cells():
    from nora.measure import Engine
    from nora.sim import NoiseSpec

    model, x, y = _toy_task()
    with pytest.raises(NoraError, match="combined noise"):
        with Engine(model, x, y, NoiseSpec(activation=GaussianAdditive(0.1))) as engine:
            combined_grid(engine, [[(1.0, 0.5)]])
    with Engine(model, x, y, NoiseSpec(activation=GaussianCombined(0.0)), repeats=2) as engine:
        cells = combined_grid(engine, [[(0.01, 1.0), (8.0, 1.0)]])
    assert cells[0][0]["mean"] > 0.99 and cells[0][1]["mean"] < 0.9
    assert cells[0][1]["amplitude"] == 8.0
