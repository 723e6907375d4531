"""Uncertainty metrics and repulsion math against scikit-learn, closed forms and autograd."""

import math

import pytest
import torch

from nora.errors import NoraError
from nora.uncertainty import metrics
from nora.uncertainty.repulsion import annealing, kde_score, median_bandwidth, pairwise_sq_dists, repulsion, sge_score
from nora.uncertainty.shift import parse_shift, shifted


def _random_probs(n, m, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, c, generator=g, dtype=torch.float64).mul(2).softmax(-1)


def test_decomposition_closed_forms():
    agree = torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])
    disagree = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    a, d = metrics.decompose(agree), metrics.decompose(disagree)
    assert a["total"].item() == pytest.approx(math.log(2)) and a["epistemic"].item() == pytest.approx(0, abs=1e-12)
    assert d["aleatoric"].item() == pytest.approx(0, abs=1e-9) and d["epistemic"].item() == pytest.approx(math.log(2))
    p = _random_probs(200, 5, 4)
    parts = metrics.decompose(p)
    assert torch.allclose(parts["total"], parts["aleatoric"] + parts["epistemic"])
    assert bool((parts["epistemic"] >= 0).all())


def test_nll_brier_accuracy_match_sklearn():
    from sklearn.metrics import accuracy_score, brier_score_loss, log_loss

    p = _random_probs(300, 3, 5, seed=1)
    y = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(2))
    row = metrics.classification(p, y)
    mean = p.mean(1).numpy()
    assert row["nll"] == pytest.approx(log_loss(y.numpy(), mean, labels=range(5)), rel=1e-9)
    assert row["brier"] == pytest.approx(brier_score_loss(y.numpy(), mean, labels=range(5)), rel=1e-9)
    assert row["accuracy"] == pytest.approx(accuracy_score(y.numpy(), mean.argmax(1)))


def test_ece_against_explicit_bins():
    p = _random_probs(500, 1, 3, seed=3)[:, 0]
    y = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(4))
    conf, pred = p.max(1)
    ece, bins = 0.0, 10
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.double().mean() * abs((pred[inside] == y[inside]).double().mean() - conf[inside].mean())
    rel = metrics.reliability(p, y, bins)
    assert rel["ece"] == pytest.approx(float(ece), abs=1e-9)
    assert sum(b["count"] for b in rel["bins"]) == 500
    # perfectly calibrated: confidence 0.75 everywhere, 75 % right
    calibrated = torch.tensor([[0.75, 0.25]] * 4)
    assert metrics.reliability(calibrated, torch.tensor([0, 0, 0, 1]))["ece"] == pytest.approx(0.0, abs=1e-12)


def test_detection_auroc_matches_mann_whitney():
    g = torch.Generator().manual_seed(5)
    s_in, s_out = torch.randn(80, generator=g), torch.randn(60, generator=g) + 1
    pairs = (s_out[:, None] > s_in[None, :]).double().mean()
    assert metrics.detection(s_in, s_out)["auroc"] == pytest.approx(float(pairs), abs=1e-12)
    out = metrics.ood(_random_probs(50, 4, 3), torch.full((40, 4, 3), 1 / 3, dtype=torch.float64))
    assert out["auroc_entropy"] == 1.0  # uniform predictions have the largest entropy


def test_bad_probabilities_rejected():
    with pytest.raises(NoraError, match="sum to 1"):
        metrics.classification(torch.randn(4, 2, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(NoraError, match="shape"):
        metrics.as_member_probs(torch.ones(4))


def test_kde_score_is_gradient_of_log_kde():
    g = torch.Generator().manual_seed(6)
    f = torch.randn(6, 7, generator=g, dtype=torch.float64)
    h = median_bandwidth(pairwise_sq_dists(f))
    expected = []
    for i in range(len(f)):
        xi = f[i].clone().requires_grad_(True)
        log_kde = torch.logsumexp(-((xi - f) ** 2).sum(1) / (2 * h), 0)
        expected.append(torch.autograd.grad(log_kde, xi)[0])
    assert torch.allclose(kde_score(f, h), torch.stack(expected), atol=1e-10)


def test_median_bandwidth_formula():
    f = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)  # squared distances 1, 9, 4
    assert median_bandwidth(pairwise_sq_dists(f)).item() == pytest.approx(4 / (2 * math.log(4)))


def test_sge_recovers_gaussian_score():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(400, 2, generator=g, dtype=torch.float64)
    est = sge_score(x, 2.0, eta=0.1)  # a ridge and a wide kernel: the plain median width overfits 400 points
    corr = torch.corrcoef(torch.stack([est.reshape(-1), -x.reshape(-1)]))[0, 1]
    assert corr > 0.9


def test_repulsion_pushes_members_apart():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    for estimator in ("kde", "sge"):
        r = repulsion(f, estimator)
        # moving along -r increases the distance
        moved = f - 0.1 * r
        assert (moved[1] - moved[0]).norm() > (f[1] - f[0]).norm()
    with pytest.raises(NoraError, match="at least 2"):
        repulsion(f[:1])
    with pytest.raises(NoraError, match="estimator"):
        repulsion(f, "svgd")


def test_repulsion_on_members_in_the_middle_equals_members_first():
    """``dim=-2`` ([B, M, C], the heads' layout) is the same repulsion as members-first ``[M, B, C]``."""
    z = torch.rand(6, 4, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for estimator in ("kde", "sge"):
        expected = repulsion(z.transpose(0, 1).contiguous(), estimator).transpose(0, 1)
        assert torch.allclose(repulsion(z, estimator, dim=-2), expected, atol=1e-12)
    with pytest.raises(NoraError, match="at least 2"):
        repulsion(z[:, :1], dim=-2)
    with pytest.raises(NoraError, match="dim 0 or -2"):
        repulsion(z, dim=1)


def test_annealing_schedules():
    assert annealing("constant", 0.0) == 1.0
    assert annealing("linear", 0.25, warm=0.5) == pytest.approx(0.5)
    assert annealing("cyclic", 0.2, cycles=2) == pytest.approx(0.2 / 0.45)
    assert annealing("cyclic", 0.95, cycles=2) == 1.0
    assert 0 < annealing("tanh", 0.1) < annealing("tanh", 0.5) < 1
    with pytest.raises(NoraError, match="schedule"):
        annealing("cosine", 0.5)


def test_shift_parsing_and_effects():
    assert parse_shift("gaussian-noise:1..5") == ("gaussian-noise", [1, 2, 3, 4, 5])
    assert parse_shift("blur:2,4") == ("blur", [2, 4])
    for bad in ("fog:1", "blur:0..2", "blur:x"):
        with pytest.raises(NoraError):
            parse_shift(bad)
    flat = torch.full((2, 1, 9, 9), 0.3)
    assert torch.allclose(shifted(flat, "blur", 3), flat, atol=1e-6)
    x = torch.zeros(20, 1, 16, 16)
    noisy = shifted(x, "gaussian-noise", 5, std=(0.5,), seed=1)
    assert float(noisy.std()) == pytest.approx(0.38 / 0.5, rel=0.05)
    assert torch.equal(noisy, shifted(x, "gaussian-noise", 5, std=(0.5,), seed=1))


def test_single_member_has_no_mutual_information_auroc():
    out = metrics.ood(_random_probs(30, 1, 3), _random_probs(20, 1, 3, seed=9))
    assert math.isnan(out["auroc_mi"]) and not math.isnan(out["auroc_entropy"])
