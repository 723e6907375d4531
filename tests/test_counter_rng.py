"""Exact mode's counter-based generator: Philox4x32-10's published values, the kernel's bits against
the kernel-free version, and the draws' statistics with fixed seeds and sound bounds."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from nora.noise import Stream, kernels, philox
from nora.seeds import SeedTree

#: Random123's known-answer vectors for Philox4x32-10: counter, key, output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
STREAM = (0x12345678, 0x9ABCDEF0, 0x0F1E2D3C, 0x4B5A6978)
N = 1_000_000
needs_kernel = pytest.mark.skipif(kernels._extension() is None, reason="the noise kernel cannot be built here")


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_gives_the_published_values(counter, key, expected):
    words = philox.philox(tuple(np.array([c], dtype=np.uint64) for c in counter), key)
    assert tuple(int(w[0]) for w in words) == expected


@needs_kernel
@pytest.mark.parametrize("vector", [True, False])
@pytest.mark.parametrize("n, group", [(1, 0), (31, 3), (33, 0), (1000, 7), (70_001, (1 << 29) + 5)])
def test_the_kernel_draws_the_bits_of_the_kernel_free_version(n, group, vector):
    """Both kernel paths (AVX2 and one lane), sizes off the group size, and blocks past 2**32."""
    expected = philox.normal(n, STREAM, group)
    out = kernels.counter_normal(torch.empty(n), None, STREAM, group, vector=vector)
    assert torch.equal(out, expected)
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    added = kernels.counter_normal(torch.empty(n), x, STREAM, group, 0.37, vector=vector)
    assert torch.equal(added, x + expected * 0.37)
    wide = kernels.counter_normal(torch.empty(n, dtype=torch.float64), x.double(), STREAM, group, 0.37, vector=vector)
    assert torch.equal(wide, x.double() + expected.double() * 0.37)


@needs_kernel
def test_the_kernel_bits_do_not_depend_on_threads():
    threads = torch.get_num_threads()
    try:
        draws = []
        for count in (1, 2):
            torch.set_num_threads(count)
            draws.append(kernels.counter_normal(torch.empty(300_017), None, STREAM, 11))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1])


def _draws(stream: Stream, sizes):
    x = torch.linspace(-1, 1, 5000)
    leaf = x.clone().requires_grad_()
    recorded = stream.add_scaled(leaf, 0.2, inplace=True)  # autograd records it: out of place
    recorded.mul(torch.arange(5000.0)).sum().backward()
    assert torch.equal(leaf.grad, torch.arange(5000.0)) and torch.equal(leaf.detach(), x)
    return [stream.standard_normal((n,)) for n in sizes] + [stream.add_scaled(x, 0.2, inplace=False),
                                                           stream.add_scaled(x.double(), 0.2, inplace=False),
                                                           recorded.detach()]


def test_a_stream_has_the_same_bits_with_and_without_the_kernel(monkeypatch):
    """A stream's draws take consecutive groups of its counter stream; layout does not matter; a draw
    added under autograd passes the gradient through unchanged."""
    node = SeedTree(21).child("site")
    sizes = (5, 64, 100_003)
    with_kernel = _draws(Stream(node), sizes)
    words = node.words(4)
    assert torch.equal(with_kernel[1], philox.normal(64, words, 158))  # after 157 + 1 groups
    strided = torch.empty(100_003, 2)[:, 0]
    stream = Stream(node)
    stream.standard_normal((5000,)), stream.standard_normal((5,)), stream.standard_normal((64,))
    assert torch.equal(stream.normal_(strided), with_kernel[2])
    monkeypatch.setattr(kernels, "_extension", lambda: None)
    without = _draws(Stream(node), sizes)
    assert all(torch.equal(a, b) for a, b in zip(with_kernel, without))


def test_draws_are_standard_normal():
    """Mean, variance, Kolmogorov-Smirnov distance and the 3-sigma tail of 10^6 draws."""
    z = Stream(SeedTree(3).child("stats")).standard_normal((N,)).double().numpy()
    assert abs(z.mean()) < 5 / math.sqrt(N)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / N)
    assert stats.kstest(z, "norm").statistic < 1.95 / math.sqrt(N)  # the 0.1% critical value
    tail = 2 * stats.norm.sf(3)
    assert abs(np.mean(np.abs(z) > 3) - tail) < 5 * math.sqrt(tail / N)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / N)


def test_draws_are_uncorrelated_at_every_structural_lag():
    """Neighbours, the two outputs of one Box-Muller pair, lanes, groups, consecutive draws of one
    stream and draws of two nodes: every correlation within 5 standard errors of 0."""
    stream = Stream(SeedTree(4).child("lags"))
    z = stream.standard_normal((N,)).double()
    bound = 5 / math.sqrt(N / 2)
    for lag in (1, 8, 16, 32, 64, 1024):
        assert abs(float(torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1])) < bound, lag
    groups = z.view(-1, 4, 8)
    squares = [groups[:, 0].reshape(-1) ** 2, groups[:, 1].reshape(-1) ** 2]  # r cos and r sin share r
    assert abs(float(torch.corrcoef(torch.stack(squares))[0, 1])) < 5 / math.sqrt(N / 4)
    for other in (stream.standard_normal((N,)), Stream(SeedTree(4).child("other")).standard_normal((N,))):
        assert abs(float(torch.corrcoef(torch.stack([z, other.double()]))[0, 1])) < 5 / math.sqrt(N)
