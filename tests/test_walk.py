"""Walking Noise: chain splitting, the fast walk against the naive one, adaptive mu, fallbacks, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from rich.console import Console
from torch import nn

import nora
from nora import GaussianAdditive, GaussianCombined, GaussianMultiplicative, NoraError
from nora.analysis.walk import FULL_FORWARD, SPLIT, naive_walk, walk
from nora.measure import split_chain
from nora.config import parse_config
from nora.data import load_dataset
from nora.models import build_model
from nora.sim import discover_sites


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """LeNet-5 trained for a few epochs on the bundled 8x8 digits, and the digits test set."""
    from nora.train import train

    config = parse_config({"name": "walk-lenet5", "output_dir": str(tmp_path_factory.mktemp("runs")),
                           "data": {"dataset": "digits", "batch_size": 64}, "model": {"arch": "lenet5"},
                           "train": {"epochs": 5, "lr": 0.003, "progress": False}})
    model = train(config, console=Console(quiet=True)).model.eval()
    return model, load_dataset("digits", "test")


def _sites_and_chain(model):
    x = torch.zeros(2, *model.input_shape)
    sites = discover_sites(model, x)
    return sites, split_chain(model, x, sites)


@pytest.mark.parametrize("arch,kwargs", [("lenet5", {}), ("lenet5", {"batch_norm": True}), ("mlp", {}),
                                         ("vgg11", {"width_mult": 0.125})])
def test_chain_models_split_at_every_site(arch, kwargs):
    sites, chain = _sites_and_chain(build_model(arch, **kwargs).eval())
    assert chain is not None
    assert sorted(chain.cuts) == [s.index for s in sites]
    assert chain.cuts[0] == 0


def test_resnet_blocks_fall_back_but_stem_and_head_split():
    model = build_model("resnet8").eval()
    sites, chain = _sites_and_chain(model)
    split = set(chain.cuts)
    assert {0, 1, 2, 3, len(sites) - 1} <= split  # input, stem conv/bn/relu, logits
    inside_blocks = [s.index for s in sites if s.module_name.startswith("layers.")]
    assert inside_blocks and not split & set(inside_blocks)


class Chained(nn.Module):
    """A user model (not nn.Sequential) whose forward only chains its children."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Functional(Chained):
    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))  # a functional op between children: not a chain


class Sneaky(Chained):
    def forward(self, x):
        h = self.fc1(x)
        h.mul_(2.0)  # in place: the wiring looks like a chain, the numbers do not
        return self.fc2(self.act(h))


def test_chain_detection_is_checked_not_assumed():
    example = torch.randn(4, 6)
    for model, is_chain in ((Chained(), True), (Functional(), False), (Sneaky(), False)):
        sites = discover_sites(model, example)
        chain = split_chain(model, example, sites)
        assert (chain is not None) == is_chain, type(model).__name__
    chain = split_chain(Chained(), example, discover_sites(Chained(), example))
    assert chain.cuts == {0: 0, 1: 1, 2: 2, 3: 3}


def _values(result):
    return [[m.values for m in s.measurements] for s in result.sites]


@pytest.mark.parametrize("noise", [GaussianAdditive(0.0), GaussianMultiplicative(0.0), GaussianCombined(0.0, 0.3)],
                         ids=["additive", "multiplicative", "combined"])
def test_fast_walk_equals_naive_walk_with_a_shared_seed(trained, noise):
    model, test = trained
    grid = [0.1, 0.5, 2.0, 8.0]
    naive = naive_walk(model, test.x, test.y, noise, grid, num_classes=10, repeats=3, seed=7, chunk_size=150)
    fast = walk(model, test.x, test.y, noise, num_classes=10, sigmas=grid, repeats=3, seed=7, chunk_size=150)
    assert {s.path for s in fast.sites} == {SPLIT} and {s.path for s in naive.sites} == {FULL_FORWARD}
    assert fast.clean == naive.clean
    # Same draws for the same (site, sigma, repeat, sample), the same clean prefix: the same numbers.
    assert _values(naive) == _values(fast)
    assert [s.midpoint.mu for s in naive.sites] == [s.midpoint.mu for s in fast.sites]


def test_relative_sigma_walk_equals_naive(trained):
    model, test = trained
    noise = GaussianAdditive(0.0, relative="std")
    for relative in ("std", "maxabs"):
        noise = GaussianAdditive(0.0, relative=relative)
        # A calibration window smaller than the data: both walks must scale by the same reference.
        spec = nora.NoiseSpec(activation=noise, calibration_samples=200)
        naive = naive_walk(model, test.x, test.y, spec, [0.3, 1.0], num_classes=10, repeats=2, seed=1,
                           sites=[2, 9], chunk_size=150)
        fast = walk(model, test.x, test.y, spec, num_classes=10, sigmas=[0.3, 1.0], repeats=2, seed=1,
                    chunk_size=150, sites=[2, 9])
        assert {s.path for s in fast.sites} == {SPLIT}
        assert _values(naive) == _values(fast)
        assert fast.measurement["calibration"] == naive.measurement["calibration"]
        assert fast.measurement["calibration"]["samples"] == 200


def test_site_repeats_average_the_noise(trained):
    model, test = trained
    # Four repeats of additive noise at sigma 2 are one draw at sigma 1 (same stream): equal results.
    repeated = walk(model, test.x, test.y, GaussianAdditive(0.0), num_classes=10, sigmas=[2.0], repeats=2,
                    sites=[3], site_repeats=4)
    single = walk(model, test.x, test.y, GaussianAdditive(0.0), num_classes=10, sigmas=[1.0], repeats=2, sites=[3])
    assert _values(repeated) == _values(single)
    # Add-then-multiply has no closed form for the average: it takes the injector path.
    literal = walk(model, test.x, test.y, GaussianCombined(0.0, 0.5, order="add_mul"), num_classes=10,
                   sigmas=[1.0], repeats=1, sites=[3], site_repeats=2)
    assert literal.sites[0].path == FULL_FORWARD


def test_adaptive_walk_finds_the_dense_grid_mu(trained):
    model, test = trained
    noise = GaussianAdditive(0.0)
    dense = walk(model, test.x, test.y, noise, num_classes=10, sigmas=nora.analysis.log_grid(1e-2, 1e3, 4),
                 repeats=8, seed=0)
    adaptive = walk(model, test.x, test.y, noise, num_classes=10, sigma_range=(1e-2, 1e3), repeats=8, seed=0)
    assert adaptive.mode == "adaptive"
    for d, a in zip(dense.sites, adaptive.sites):
        assert d.midpoint.found and a.midpoint.found
        # 450 test samples: both estimates carry sampling noise of about 0.02 decades.
        assert abs(math.log10(a.midpoint.mu / d.midpoint.mu)) < 0.08, d.site.name
        assert len(a.measurements) <= 14 < len(d.measurements) == 21


def test_non_chain_sites_use_the_injector_path():
    torch.manual_seed(0)
    model = build_model("resnet8", input_shape=(3, 16, 16), num_classes=4).eval()
    x, y = torch.randn(40, 3, 16, 16), torch.randint(0, 4, (40,))
    result = walk(model, x, y, GaussianAdditive(0.0), num_classes=4, sigmas=[0.1, 10.0], repeats=2,
                  sites=[1, 5, 27])
    assert [s.path for s in result.sites] == [SPLIT, FULL_FORWARD, SPLIT]
    assert result.chain
    forced = walk(model, x, y, GaussianAdditive(0.0), num_classes=4, sigmas=[0.1], repeats=2, sites=[1], split=False)
    assert forced.sites[0].path == FULL_FORWARD
    assert nora.sim.injector_of(model) is None  # the fallback's injector is gone afterwards


def test_bad_walk_input(trained):
    model, test = trained
    kwargs = {"num_classes": 10, "repeats": 1}
    with pytest.raises(NoraError, match="out of range"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sites=[99], sigmas=[1.0], **kwargs)
    with pytest.raises(NoraError, match="unknown site"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sites=["fc9"], sigmas=[1.0], **kwargs)
    with pytest.raises(NoraError, match="either a sigma grid"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sigmas=[1.0], sigma_range=(0.1, 1.0), **kwargs)
    with pytest.raises(NoraError, match="not increasing"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sigma_range=(1.0, 0.1), **kwargs)
    with pytest.raises(NoraError, match="strictly increasing"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sigmas=[1.0, 0.5], **kwargs)
    with nora.attach(model, GaussianAdditive(0.1)), pytest.raises(NoraError, match="already has noise attached"):
        walk(model, test.x, test.y, GaussianAdditive(0.0), sigmas=[1.0], **kwargs)


def test_prefix_recomputed_per_chunk_when_the_cache_would_be_too_big(trained):
    model, test = trained
    kwargs = {"num_classes": 10, "sigmas": [0.3, 3.0], "repeats": 2, "seed": 5, "chunk_size": 100, "sites": [4, 8]}
    cached = walk(model, test.x, test.y, GaussianAdditive(0.0), **kwargs)
    streamed = walk(model, test.x, test.y, GaussianAdditive(0.0), cache_bytes=0, **kwargs)
    assert _values(cached) == _values(streamed)
