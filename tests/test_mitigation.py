"""Tailored per-site repetition under a budget: optimality of the allocation, and the real comparison."""

import itertools

import pytest
import torch

from nora.analysis.mitigation import compare_at_equal_cost, extra_cost, tailored_repeats
from nora.errors import NoraError


def _objective(repeats, mu):
    return sum(1.0 / (r * m ** 2) for r, m in zip(repeats, mu))


def test_greedy_is_optimal_for_unit_costs():
    mu = [0.1, 1.0]
    assert tailored_repeats(mu, budget=3) == [4, 1]   # gains 50, 16.7, 8.3 at site 0 beat 0.5 at site 1
    for mu in ([0.2, 0.5, 0.9], [0.3, 0.3, 2.0], [1.0, 0.4, 0.25]):
        for budget in range(0, 7):
            best = min((r for r in itertools.product(range(1, budget + 2), repeat=3)
                        if extra_cost(r, [1, 1, 1]) <= budget), key=lambda r: _objective(r, mu))
            got = tailored_repeats(mu, budget)
            assert extra_cost(got, [1, 1, 1]) <= budget
            assert _objective(got, mu) == pytest.approx(_objective(best, mu))


def test_budget_with_costs_and_robust_sites():
    got = tailored_repeats([0.1, None, 0.5], budget=250, costs=[100, 10, 20])
    assert got[1] == 1                                 # a site that never failed needs no repetition
    assert extra_cost(got, [100, 10, 20]) <= 250
    with pytest.raises(NoraError, match="mu of site 1"):
        tailored_repeats([0.1, -1.0], budget=1)
    with pytest.raises(NoraError, match="budget"):
        tailored_repeats([0.1], budget=-1)


def test_compare_at_equal_cost_on_a_model():
    import nora
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(300, 4)
    y = model(x).argmax(1)                             # labels the clean model gets right
    sites = nora.sites(model, x[:1])
    costs = [s.numel for s in sites]
    mu = [0.05] + [1.0] * (len(sites) - 1)             # the input site is the fragile one
    out = compare_at_equal_cost(model, x, y, nora.GaussianAdditive(0.5), mu, costs, uniform=2, realisations=2)
    pol = out["policies"]
    assert pol["tailored"]["extra_cost"] <= out["budget"] == pol["uniform"]["extra_cost"]
    assert pol["tailored"]["repeats"][0] > pol["uniform"]["repeats"][0]
    assert all(0 <= a <= 1 for p in pol.values() for a in p["accuracy"])
    # The same draws for every policy: repeated execution can only average the noise down.
    assert pol["uniform"]["mean"] >= pol["single"]["mean"] - 0.02
