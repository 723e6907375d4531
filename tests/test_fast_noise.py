"""The fast noise mode (the Gaussian bank): its statistics, its reproducibility, its curves.

Statistical bounds are five standard errors with fixed seeds: |mean| < 5/sqrt(n), |var - 1| <
5 sqrt(2/n), |corr| < 5/sqrt(n); the periodogram of white noise has exponential ordinates, so its
largest of m lies below ln(m) + 12 except with probability ~1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nora import GaussianAdditive, GaussianMultiplicative, NoiseSpec, NoraError, SeedTree, SitePolicy
from nora.data import load_dataset
from nora.measure import Engine
from nora.noise import kernels, make_noise
from nora.noise.rng import BANK_BLOCK, BankStream, Stream, bank_for, check_mode, make_stream, mode_of
from nora.sim import attach


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def _pure_noise_model(width: int) -> nn.Module:
    """Linear layers with zero weights and biases: each site's output is exactly its noise."""
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, width))
    for layer in model:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def test_a_draw_is_standard_normal_and_white():
    n = 1 << 20
    z = BankStream(SeedTree(5).child("a")).standard_normal((n,))
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    # Shape of the distribution: the two-sided 5% tail and the fourth moment of a normal.
    tail = float((z.abs() > 1.959964).double().mean())
    assert abs(tail - 0.05) < 5 * math.sqrt(0.05 * 0.95 / n)
    assert abs(float((z.double() ** 4).mean()) - 3) < 5 * math.sqrt(96 / n)
    for lag in (1, 2, 7, 1000, BANK_BLOCK // 2):
        assert abs(_corr(z[:-lag], z[lag:])) < 5 / math.sqrt(n - lag)
    power = torch.fft.rfft(z.double()).abs().pow(2)[1:] / n  # mean 1, exponential ordinates
    assert float(power.max()) < math.log(power.numel()) + 12


def test_no_period_even_when_a_draw_outgrows_the_smallest_bank():
    # The smallest bank of one block is too small for this draw: the bank grows (at least two draws
    # wide), keeps its old values, and no bank entry appears twice in the draw.
    stream = BankStream(SeedTree(9), bank_size=BANK_BLOCK)
    n = BANK_BLOCK + BANK_BLOCK // 2
    z = stream.standard_normal((n,))
    bank = bank_for(9, torch.device("cpu"), torch.float32)
    assert bank.size >= 2 * n
    prefix = bank.values[:BANK_BLOCK].clone()
    bank.ensure(bank.size + BANK_BLOCK)
    assert torch.equal(bank.values[:BANK_BLOCK], prefix)
    # A bank that wrapped would repeat the draw at the lag of its size: look there and around it.
    for lag in (BANK_BLOCK // 2, BANK_BLOCK - 1, BANK_BLOCK, BANK_BLOCK + 1):
        assert abs(_corr(z[:-lag], z[lag:])) < 5 / math.sqrt(n - lag)
        assert float((z[:-lag] == z[lag:]).double().mean()) < 1e-3
    power = torch.fft.rfft(z.double()).abs().pow(2)[1:] / n
    assert float(power.max()) < math.log(power.numel()) + 12


def _cross_correlation(a: torch.Tensor, b: torch.Tensor, max_lag: int) -> np.ndarray:
    """corr(a_i, b_{i+d}) for every lag |d| <= max_lag, each over its n - |d| overlapping pairs."""
    n = a.numel()
    fa, fb = np.fft.rfft(a.double().numpy(), 2 * n), np.fft.rfft(b.double().numpy(), 2 * n)
    full = np.fft.irfft(np.conj(fa) * fb, 2 * n)  # full[d] = sum_i a_i b_{i+d}, negative d wrapped
    lags = np.arange(-max_lag, max_lag + 1)
    return full[lags % (2 * n)] / (n - np.abs(lags))


def test_draws_that_overlap_in_the_bank_are_uncorrelated_at_every_lag():
    # A bank of one block and draws of a quarter of it: windows overlap, i.e. two draws hold the same
    # bank values at one lag. Their squares show it; their values must not (the signs differ there).
    n, max_lag = 1 << 18, 1 << 17
    stream = BankStream(SeedTree(12), bank_size=BANK_BLOCK)
    draws = [stream.standard_normal((n,)) for _ in range(4)]
    # Under independence each lag's estimate has sd <= 1/sqrt(n - max_lag); 6.5 sd over 2**18 lags
    # is exceeded with probability ~2e-5.
    bound = 6.5 / math.sqrt(n - max_lag)
    overlapping = 0
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            squares = _cross_correlation(draws[i] ** 2 - 1, draws[j] ** 2 - 1, max_lag) / 2  # var(z^2) = 2
            overlapping += float(np.abs(squares).max()) > 0.3
            assert float(np.abs(_cross_correlation(draws[i], draws[j], max_lag)).max()) < bound
    assert overlapping >= 1  # the test did look at draws sharing bank values


def test_sites_samples_passes_and_repeats_are_uncorrelated_and_packing_changes_nothing():
    width, batch = 500, 200
    n = width * batch
    bound = 5 / math.sqrt(n)
    model = _pure_noise_model(width)
    spec = NoiseSpec(noise_mode="fast", activation=GaussianAdditive(1.0), policy=SitePolicy(include=("linear",)))
    handle = attach(model, spec, seed=SeedTree(3).child("eval", "repeat", 0), example_input=torch.zeros(2, width))
    assert isinstance(handle.streams[0], BankStream)
    seen = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone())) for layer in model]
    x = torch.zeros(batch, width)
    with torch.no_grad():
        model(x)
        model(x)
    first, second, next_pass = seen[0], seen[1], seen[2]
    assert abs(float(first.mean())) < bound
    assert abs(float(first.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(_corr(first, second)) < bound
    assert abs(_corr(first[: batch // 2], first[batch // 2:])) < 5 / math.sqrt(n / 2)
    assert abs(_corr(first, next_pass)) < bound
    seen.clear()
    handle.reseed(SeedTree(3).child("eval", "repeat", 1))
    with torch.no_grad():
        model(x)
    other_repeat = seen[0]
    assert abs(_corr(first, other_repeat)) < bound
    seen.clear()
    handle.use_streams([SeedTree(3).child("eval", "repeat", 0), SeedTree(3).child("eval", "repeat", 1)])
    with torch.no_grad():
        model(torch.zeros(2 * batch, width))
    assert torch.equal(seen[0][:batch], first) and torch.equal(seen[0][batch:], other_repeat)
    for h in hooks:
        h.remove()
    handle.detach()


def test_the_same_node_gives_the_same_draws_on_every_dtype_and_run():
    a = BankStream(SeedTree(1).child("x")).standard_normal((3, 1000))
    b = BankStream(SeedTree(1).child("x")).standard_normal((3, 1000))
    assert torch.equal(a, b)
    assert not torch.equal(a, BankStream(SeedTree(1).child("y")).standard_normal((3, 1000)))
    c = BankStream(SeedTree(1).child("x")).standard_normal((3, 1000), dtype=torch.float64)
    assert torch.allclose(c.float(), a, atol=1e-6)
    # A non-contiguous target is filled in its logical order.
    t = torch.empty(1000, 3).t()
    BankStream(SeedTree(1).child("x")).normal_(t)
    assert torch.equal(t, a)


def test_modes_are_chosen_by_name_and_an_unknown_one_is_one_clear_error():
    assert isinstance(make_stream(0, "exact"), Stream) and isinstance(make_stream(0, "fast"), BankStream)
    assert mode_of(NoiseSpec()) == "exact" and mode_of(NoiseSpec(noise_mode="fast")) == "fast"
    with pytest.raises(NoraError, match="unknown noise mode 'quick'; choose one of exact, fast"):
        check_mode("quick")
    with pytest.raises(NoraError, match="bank size"):
        BankStream(0, bank_size=0)
    with pytest.raises(NoraError, match="floating-point"):
        BankStream(0).normal_(torch.zeros(4, dtype=torch.int64))


@pytest.fixture(scope="module")
def digits_mlp():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        optimizer.step()
    return model.eval(), test.x, test.y


def test_fast_mode_keeps_backends_and_packing_bit_identical(digits_mlp):
    model, x, y = digits_mlp
    spec = NoiseSpec(noise_mode="fast", activation=GaussianMultiplicative(0.5), sites=[2])
    results = []
    for split, pack in ((True, True), (False, True), (False, False)):
        with Engine(model, x, y, spec, repeats=4, seed=2, split=split, pack=pack, chunk_size=100) as engine:
            (m,) = engine.accuracy([0.4])
            results.append((m.path, m.values))
    assert results[0][0] == "split" and results[1][0] == "full-forward"
    assert results[0][1] == results[1][1] == results[2][1]
    with Engine(model, x, y, spec.replace(noise_mode="exact"), repeats=4, seed=2) as engine:
        assert engine.accuracy([0.4])[0].values != results[0][1]  # the modes really draw differently


def test_accuracy_versus_sigma_agrees_with_exact_mode_within_sampling_error(digits_mlp):
    model, x, y = digits_mlp
    sigmas = [0.25, 0.5, 1.0, 2.0]
    repeats = 5
    curves = {}
    for mode in ("exact", "fast"):
        spec = NoiseSpec(activation=GaussianAdditive(1.0, relative="std"), noise_mode=mode)
        with Engine(model, x, y, spec, repeats=repeats, seed=11) as engine:
            curves[mode] = [m.values for m in engine.accuracy(sigmas)]
    declines = [np.mean(v) for v in curves["exact"]]
    assert declines[0] > declines[-1] + 0.2  # the grid spans the decline of the curve
    for exact, fast in zip(curves["exact"], curves["fast"]):
        # Across repeats the inputs are shared: the spread of the repeat values is the noise's own.
        se = math.sqrt(np.var(exact, ddof=1) / repeats + np.var(fast, ddof=1) / repeats + 1 / len(y) ** 2)
        assert abs(np.mean(exact) - np.mean(fast)) < 5 * se


def test_fused_bank_addition_is_the_drawn_noise_added_and_keeps_the_stream_in_step():
    """``add_scaled`` adds the bank window times the signs straight into x: the same noise as drawing z first
    (to float rounding), the same stream position afterwards, and gradients flow through it."""
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    fused, drawn = BankStream(SeedTree(5).child("s")), BankStream(SeedTree(5).child("s"))
    y = fused.add_scaled(x, 0.3, inplace=False)
    expected = x + 0.3 * drawn.standard_normal(x.shape)
    assert torch.allclose(y, expected, atol=1e-6) and not torch.equal(y, x)
    assert torch.equal(fused.standard_normal((10,)), drawn.standard_normal((10,)))
    inplace = x.clone()
    assert BankStream(SeedTree(5).child("s")).add_scaled(inplace, 0.3, inplace=True) is not None
    assert torch.equal(inplace, y)
    leaf = x.clone().requires_grad_(True)
    BankStream(SeedTree(5).child("s")).add_scaled(leaf, 0.3, inplace=False).sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(x))


def test_fused_bank_addition_takes_per_sample_levels():
    x = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(1))
    sigma = torch.linspace(0, 1, 8).view(8, 1, 1)
    y = BankStream(SeedTree(6)).add_scaled(x, sigma, inplace=False)
    expected = x + sigma * BankStream(SeedTree(6)).standard_normal(x.shape)
    assert torch.allclose(y, expected, atol=1e-6) and torch.equal(y[0], x[0])


@pytest.fixture(scope="module")
def per_sample_kernel():
    """The compiled per-sample kernel (built on first use: about a minute on a fresh machine)."""
    if kernels._extension() is None:
        pytest.skip("the per-sample kernel needs ninja and a C++ compiler")


def _per_sample_draws(x: torch.Tensor, sigma: torch.Tensor) -> list[torch.Tensor]:
    """In place, out of place, a scaled draw and the stream's next values, from one fresh stream."""
    stream = BankStream(SeedTree(9).child("kernel"))
    inplace = x.clone()
    stream.add_scaled(inplace, sigma, inplace=True)
    return [inplace, stream.add_scaled(x, sigma, inplace=False),
            stream.normal_scaled_(torch.empty_like(x), sigma), stream.standard_normal((7,), dtype=x.dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 6, 24, 24), (7, 13000)])
def test_the_per_sample_kernel_gives_the_torch_paths_bits(per_sample_kernel, dtype, shape, monkeypatch):
    """One level per sample through the compiled kernel: the bits and stream position of torch's two
    passes, whether sign rows hold whole samples (LeNet-5's conv1 at batch 128) or restart inside one
    (7 x 13000: rows of 22750); each sample's noise has its own level."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    sigma = torch.rand(shape[0], generator=generator, dtype=dtype).view(-1, *[1] * (len(shape) - 1))
    assert kernels.usable(x, sigma)
    assert not kernels.usable(x, sigma.reshape(1, *sigma.shape[1:-1], -1))  # a level per position, not per sample
    compiled = _per_sample_draws(x, sigma)
    monkeypatch.setattr(kernels, "usable", lambda *args: False)
    for fast, reference in zip(compiled, _per_sample_draws(x, sigma)):
        assert torch.equal(fast, reference)
    # Per sample the noise's std is its level within 10 % (3,456+ values: over 8 standard errors).
    spread = (compiled[0] - x).flatten(1).std(dim=1) / sigma.flatten()
    assert torch.all((spread - 1).abs()[sigma.flatten() > 0.05] < 0.1)


def _scalar_draws(x: torch.Tensor) -> list[torch.Tensor]:
    """In place, out of place at two levels, and the stream's next values, from one fresh stream."""
    stream = BankStream(SeedTree(9).child("scalar"))
    inplace = x.clone()
    stream.add_scaled(inplace, 0.37, inplace=True)
    return [inplace, stream.add_scaled(x, 0.1, inplace=False), stream.add_scaled(x, 3.0, inplace=False),
            stream.standard_normal((7,), dtype=x.dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (5, 7), (1, 6, 24, 24), (128, 6, 24, 24), (7, 13000)])
def test_the_one_level_kernel_gives_addcmuls_bits(per_sample_kernel, dtype, shape, monkeypatch):
    """One level for the whole draw through ``bank_add``: the bits and stream position of torch's
    ``addcmul`` of the windows, for draws within one sign row, rows that hold whole samples and rows
    that restart inside one."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    assert kernels.compiled_for(x) and not kernels.compiled_for(torch.randn(4, 6, dtype=dtype).t())
    calls = []
    monkeypatch.setattr(kernels, "bank_add", lambda *args, _run=kernels.bank_add: calls.append(1) or _run(*args))
    compiled = _scalar_draws(x)
    assert len(calls) == 3
    monkeypatch.setattr(kernels, "compiled_for", lambda x: False)
    for fast, reference in zip(compiled, _scalar_draws(x)):
        assert torch.equal(fast, reference)
    assert not torch.equal(compiled[0], x)


@pytest.mark.parametrize("kind", ["additive", "multiplicative"])
def test_vant_levels_through_the_kernel_train_as_the_torch_path(per_sample_kernel, kind, monkeypatch):
    """A training step with per-sample levels (VANT) in fast mode: the same loss and gradients with the
    compiled kernel as with torch alone (the kernel's gradient passes the additive noise unchanged)."""
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    levels = torch.linspace(0.0, 1.0, 128)

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 24 * 24, 10))
        spec = NoiseSpec(activation=make_noise(kind, 0.2), noise_mode="fast")
        injector = attach(model, spec, seed=2, example_input=x[:2], when="train")
        injector.sigma_scale = levels
        loss = model(x).square().mean()
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    calls = []
    for name in ("add_scaled_draw", "scaled_draw"):
        monkeypatch.setattr(kernels, name, lambda *args, _run=getattr(kernels, name): calls.append(1) or _run(*args))
    loss, grads = step()
    assert calls  # the large sites went through the kernel
    monkeypatch.setattr(kernels, "usable", lambda *args: False)
    reference_loss, reference_grads = step()
    assert torch.equal(loss, reference_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads))
