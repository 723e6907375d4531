"""Noise models: the stated means and variances, sqrt(R) averaging, per-sample sigma, bad sigma."""

import math

import pytest
import torch

from nora import GaussianAdditive, GaussianCombined, GaussianMultiplicative, NoraError
from nora.noise import Stream, make_noise, noise_from_dict

N = 400_000
# The standard error of a sample variance of N normals is var*sqrt(2/N) (~0.22% here); 5 of them.
VAR_TOL = 5 * math.sqrt(2 / N)


def draws(seed=0):
    source = Stream(seed)
    return lambda shape: (lambda: source.standard_normal(shape))


def perturb(model, x, seed=0, **kw):
    return model.perturb(x, draws(seed)(x.shape), **kw)


def test_source_is_standard_normal_and_deterministic():
    a = Stream(3).standard_normal((N,))
    b = Stream(3).standard_normal((N,))
    c = Stream(4).standard_normal((N,))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert abs(float(a.mean())) < 5 / math.sqrt(N)
    assert abs(float(a.var()) - 1) < VAR_TOL


def test_stream_halves_are_uncorrelated():
    z = Stream(0).standard_normal((N,))
    half = N // 2
    corr = torch.corrcoef(torch.stack([z[:half], z[half:]]))[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(half)


def test_additive_mean_and_variance():
    x = torch.full((N,), 2.0)
    y = perturb(GaussianAdditive(0.3), x)
    assert abs(float(y.mean()) - 2.0) < 5 * 0.3 / math.sqrt(N)
    assert abs(float(y.var()) / 0.09 - 1) < VAR_TOL


def test_multiplicative_has_mean_one():
    x = torch.full((N,), 3.0)
    y = perturb(GaussianMultiplicative(0.2), x)
    assert abs(float(y.mean()) - 3.0) < 5 * 0.6 / math.sqrt(N)
    assert abs(float(y.var()) / (0.6**2) - 1) < VAR_TOL


@pytest.mark.parametrize("order", ["mul_add", "add_mul"])
def test_combined_variance_matches_both_orders(order):
    amplitude, ratio, x0 = 0.5, 0.4, 2.0
    s_add, s_mul = amplitude * ratio, amplitude * (1 - ratio)
    y = perturb(GaussianCombined(amplitude, ratio, order=order), torch.full((N,), x0))
    if order == "mul_add":
        expected = (x0 * s_mul) ** 2 + s_add**2
    else:  # Var[(x+a)(1+m)] = (x^2 + s_a^2) s_m^2 + s_a^2
        expected = (x0**2 + s_add**2) * s_mul**2 + s_add**2
    assert abs(float(y.mean()) - x0) < 5 * math.sqrt(expected / N)
    assert abs(float(y.var()) / expected - 1) < 2 * VAR_TOL


def test_normalize_divides_by_elements_per_sample():
    x = torch.zeros(2000, 50)
    y = perturb(GaussianAdditive(5.0, normalize=True), x)
    assert abs(float(y.std()) - 0.1) < 0.002


def test_per_sample_sigma_vector():
    sigma = torch.tensor([0.0, 0.5, 2.0])
    x = torch.zeros(3, 100_000)
    y = perturb(GaussianAdditive(sigma), x)
    assert float(y[0].abs().max()) == 0.0
    assert abs(float(y[1].std()) - 0.5) < 0.01
    assert abs(float(y[2].std()) - 2.0) < 0.04
    with pytest.raises(NoraError, match="per-sample sigma has 3 values"):
        perturb(GaussianAdditive(sigma), torch.zeros(4, 10))


@pytest.mark.parametrize("repeats", [4, 16])
def test_averaging_reduces_sigma_by_sqrt_r(repeats):
    exact = GaussianAdditive(0.8).averaged(repeats)
    y = perturb(exact, torch.zeros(N))
    assert abs(float(y.std()) - 0.8 / math.sqrt(repeats)) < 0.8 / math.sqrt(repeats) * VAR_TOL


def test_add_then_mul_has_no_closed_form_average():
    assert GaussianCombined(0.5, 0.5, order="add_mul").averaged(4) is None
    assert GaussianCombined(0.5, 0.5, order="mul_add").averaged(4).amplitude == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "x", None])
def test_bad_sigma_is_rejected(bad):
    with pytest.raises(NoraError, match="sigma must be"):
        GaussianAdditive(bad)


def test_bad_sigma_vector_and_ratio():
    with pytest.raises(NoraError):
        GaussianMultiplicative(torch.tensor([0.1, -0.2]))
    with pytest.raises(NoraError, match="ratio"):
        GaussianCombined(0.3, 1.5)
    with pytest.raises(NoraError, match="order"):
        GaussianCombined(0.3, 0.5, order="sideways")


def test_from_dict_round_trip_and_errors():
    model = GaussianCombined(0.3, 0.2, order="add_mul", normalize=True)
    assert noise_from_dict(model.to_dict()) == model
    assert make_noise("multiplicative", 0.1) == GaussianMultiplicative(0.1)
    with pytest.raises(NoraError, match="unknown noise kind"):
        noise_from_dict({"kind": "pink", "sigma": 1})
    with pytest.raises(NoraError, match="unknown parameter"):
        noise_from_dict({"kind": "additive", "sigma": 1, "sigmaa": 2})


def test_gradients_flow_through_noise():
    x = torch.randn(64, 10, requires_grad=True)
    for model in (GaussianAdditive(0.3), GaussianMultiplicative(0.3), GaussianCombined(0.3, 0.5)):
        y = perturb(model, x)
        y.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        if isinstance(model, GaussianAdditive):
            assert torch.equal(x.grad, torch.ones_like(x))
        x.grad = None
