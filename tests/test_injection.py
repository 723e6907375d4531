"""Sites on any model, selection, placement (global / layer-wise / mapped), repeats, determinism."""

import math

import pytest
import torch
from torch import nn

import nora
from nora import GaussianAdditive, GaussianMultiplicative, NoraError
from nora.models import build_model
from nora.sim import discover_sites, select_sites
from nora.sim.injector import NoiseInjector

_ADDS_OUTSIDE_GRAPH = NoiseInjector._adds_outside_graph


class Reuse(nn.Module):
    """A user model that calls one ReLU twice and uses a functional op."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x))).tanh() + self.act(x[:, :4])


def test_reused_module_gives_one_site_per_call():
    sites = discover_sites(Reuse(), torch.zeros(2, 6))
    assert [s.name for s in sites] == ["input", "fc1", "act#0", "fc2", "act#1"]
    assert [s.call for s in sites] == [0, 0, 0, 0, 1]
    assert sites[2].output_shape == (5,) and sites[4].output_shape == (4,)


@pytest.mark.parametrize(
    "arch,kwargs,count",
    [("mlp", {}, 8), ("mlp", {"batch_norm": True}, 11), ("lenet5", {}, 12), ("lenet5", {"batch_norm": True}, 16)],
)
def test_site_counts_match_methods(arch, kwargs, count):
    model = build_model(arch, **kwargs)
    assert len(nora.sites(model, torch.zeros(2, *model.input_shape))) == count


def test_user_selected_site_types():
    model = build_model("lenet5")
    sites = nora.sites(model, torch.zeros(1, 1, 28, 28), site_types=["Conv2d", "Linear"], include_input=False)
    assert [s.module_type for s in sites] == ["Conv2d"] * 2 + ["Linear"] * 3
    with pytest.raises(NoraError, match="unknown module type"):
        nora.sites(model, torch.zeros(1, 1, 28, 28), site_types=["Conv9d"])


def test_selection_by_index_range_name_glob_type():
    sites = nora.sites(build_model("lenet5"), torch.zeros(1, 1, 28, 28))
    assert select_sites(sites, 3) == [3]
    assert select_sites(sites, "2-4") == [2, 3, 4]
    assert select_sites(sites, "features.0") == [1]
    assert select_sites(sites, "classifier.*") == [7, 8, 9, 10, 11]
    assert select_sites(sites, "ReLU") == [2, 5, 8, 10]
    assert select_sites(sites, ["type:MaxPool2d", 0]) == [0, 3, 6]
    assert select_sites(sites, "all") == list(range(12))


@pytest.mark.parametrize("bad,message", [(12, "out of range"), (-1, "out of range"), ("fc9", "unknown site"),
                                         ("type:GRU", "no site of type"), ("5-20", "not inside")])
def test_bad_selection(bad, message):
    sites = nora.sites(build_model("lenet5"), torch.zeros(1, 1, 28, 28))
    with pytest.raises(NoraError, match=message):
        select_sites(sites, bad)


def _probe(model, example):
    """Record every site's output (after noise) with hooks registered after the injector's."""
    outputs = []
    handles = [m.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
               for m in model.modules() if isinstance(m, (nn.Linear, nn.ReLU))]
    return outputs, handles


def test_layerwise_noise_touches_only_the_chosen_site():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    x = torch.randn(64, 20)
    clean_out, handles = _probe(model, x)
    model(x)
    for h in handles:
        h.remove()
    with nora.attach(model, GaussianAdditive(0.5), sites=[2], example_input=x, seed=1):
        noisy_out, handles = _probe(model, x)
        model(x)
        for h in handles:
            h.remove()
    assert torch.equal(noisy_out[0], clean_out[0])  # site 1 (fc1) untouched
    assert not torch.equal(noisy_out[1], clean_out[1])  # site 2 (ReLU) noisy
    delta = noisy_out[1] - clean_out[1]
    assert abs(float(delta.std()) - 0.5) < 0.05


def test_global_noise_on_user_model_without_example_input():
    torch.manual_seed(0)
    model = Reuse()
    x = torch.randn(8, 6)
    clean = model(x)
    with nora.attach(model, GaussianAdditive(0.2), seed=0) as injector:
        noisy = model(x)
        assert len(injector.sites) == 5  # discovered on the first forward pass
    assert not torch.allclose(clean, noisy)
    assert torch.equal(model(x), clean)  # detached: clean again


def test_same_seed_same_numbers_and_input_untouched():
    model = build_model("lenet5").eval()
    x = torch.randn(16, 1, 28, 28)
    x_copy = x.clone()
    with torch.no_grad():
        with nora.attach(model, GaussianMultiplicative(0.3), seed=5):
            a = model(x)
        with nora.attach(model, GaussianMultiplicative(0.3), seed=5):
            b = model(x)
        with nora.attach(model, GaussianMultiplicative(0.3), seed=6):
            c = model(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, x_copy)


def test_mapped_sigma_and_budget():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU())
    x = torch.zeros(4000, 10)
    with nora.attach(model, GaussianAdditive(0.0), sigmas=[0.0, 0.0, 1.0], example_input=x, seed=0) as inj:
        assert [p.noise.sigma if p else None for p in inj.plan] == [None, None, 1.0]  # sigma 0: clean, no draws
    with nora.attach(model, GaussianAdditive(0.0), sigmas=[1.0, 1.0, 2.0], budget=2.0, example_input=x) as inj:
        assert [p.noise.sigma for p in inj.plan] == pytest.approx([0.5, 0.5, 1.0])
    with pytest.raises(NoraError, match="sigma map has 2 values but the model has 3 sites"):
        nora.attach(model, GaussianAdditive(0.1), sigmas=[0.1, 0.2], example_input=x)
    assert nora.sim.injector_of(model) is None  # a failed attach leaves no hooks behind


def test_repeats_reduce_noise_by_sqrt_r_at_a_site():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.full((20000, 10), 1.0)
    stds = {}
    for repeats in (1, 4, 16):
        with torch.no_grad(), nora.attach(model, GaussianAdditive(0.8), sites=[1], repeats=repeats,
                                          example_input=x, seed=0):
            stds[repeats] = float((model(x) - 1).std())
    for repeats in (4, 16):
        assert stds[repeats] == pytest.approx(0.8 / math.sqrt(repeats), rel=0.03)


def test_literal_repeats_for_add_then_multiply():
    model = nn.Sequential(nn.ReLU())
    x = torch.full((40000, 10), 1.0)
    noise = nora.GaussianCombined(0.6, 0.5, order="add_mul")
    var = {}
    for repeats in (1, 9):
        with torch.no_grad(), nora.attach(model, noise, sites=[1], repeats=repeats, example_input=x, seed=0):
            var[repeats] = float(model(x).var())
    assert var[9] == pytest.approx(var[1] / 9, rel=0.05)


def test_per_site_repeats_and_cost():
    model = build_model("mlp")
    x = torch.zeros(2, 1, 28, 28)
    with nora.attach(model, GaussianAdditive(0.1), repeats={"ReLU": 4}, example_input=x) as inj:
        cost = inj.cost()
    assert cost["repeats"] == [1, 1, 4, 1, 4, 1, 4, 1]
    assert cost["evaluations_per_sample"] == 784 + 64 * 3 + 64 * 4 * 3 + 10
    assert cost["overhead"] > 1


def test_train_only_noise_is_off_in_eval():
    model = nn.Sequential(nn.Linear(4, 4))
    x = torch.randn(3, 4)
    clean = model(x)
    with nora.attach(model, GaussianAdditive(1.0), when="train", seed=0):
        model.eval()
        assert torch.equal(model(x), clean)
        model.train()
        assert not torch.equal(model(x), clean)


def test_sigma_scale_per_sample():
    model = nn.Sequential(nn.ReLU())
    x = torch.ones(3, 50000)
    with torch.no_grad(), nora.attach(model, GaussianAdditive(1.0), sites=[1], example_input=x, seed=0) as inj:
        inj.sigma_scale = torch.tensor([0.0, 0.1, 1.0])
        y = model(x) - 1
    assert float(y[0].abs().max()) == 0
    assert float(y[1].std()) == pytest.approx(0.1, rel=0.03)
    assert float(y[2].std()) == pytest.approx(1.0, rel=0.03)


def test_per_sample_scale_is_shaped_once_per_batch_but_follows_every_change():
    # Sites of two shapes (4-d conv outputs, 2-d linear outputs) share one shaped scale per shape;
    # a new scale, or the same tensor changed in place, is used at once.
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 4))
    for p in model.parameters():
        nn.init.zeros_(p)
    x = torch.zeros(3, 1, 8, 8)
    with torch.no_grad(), nora.attach(model, GaussianAdditive(1.0), sites=[1, 2], example_input=x, seed=0) as inj:
        scale = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        inj.sigma_scale = scale
        y = model(x)
        assert torch.equal(y[0], torch.zeros(4)) and not torch.equal(y[1], torch.zeros(4))
        scale[0], scale[1] = 1.0, 0.0  # in place: the cached float32 copy must not be reused
        y = model(x)
        assert not torch.equal(y[0], torch.zeros(4)) and torch.equal(y[1], torch.zeros(4))
        inj.sigma_scale = torch.tensor([0.0, 0.0, 1.0])
        y = model(x)
        assert torch.equal(y[:2], torch.zeros(2, 4)) and not torch.equal(y[2], torch.zeros(4))
        inj.sigma_scale = torch.ones(2)
        with pytest.raises(NoraError, match="per-sample sigma has 2 values but the batch has 3 samples"):
            model(x)


def test_relative_sigma_uses_calibrated_scale():
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight.mul_(10)
    x = torch.randn(5000, 8)
    with torch.no_grad(), nora.attach(model, GaussianAdditive(0.1, relative="std"), sites=[1],
                                      example_input=x) as inj:
        with pytest.raises(NoraError, match="calibration"):
            model(x)
        ref = inj.calibrate([x[:2500], x[2500:]])
        clean_std = float(torch.nn.functional.linear(x, model[0].weight, model[0].bias).std())
        assert ref[1] == pytest.approx(clean_std, rel=0.02)
        noisy = model(x)
    with torch.no_grad():
        clean = model(x)
    assert float((noisy - clean).std()) == pytest.approx(0.1 * clean_std, rel=0.03)


def test_gradients_flow_in_noisy_training():
    model = build_model("lenet5")
    x = torch.randn(8, 1, 28, 28)
    with nora.attach(model, GaussianMultiplicative(0.2), seed=0):
        model(x).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


class KeepsOutput(nn.Module):
    """A user layer: its forward may keep its output for a backward, so noise must not bypass the graph."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        return self.fc(x)


def _noisy_step(model: nn.Module, noise, mode: str, x: torch.Tensor, graph_free: bool, monkeypatch,
                policy: nora.SitePolicy | None = None):
    """Loss, gradients and the sites that bypassed the graph, for one noisy training step."""
    bypassed = []
    monkeypatch.setattr(NoiseInjector, "_adds_outside_graph",
                        lambda self, index, *rest: (graph_free and _ADDS_OUTSIDE_GRAPH(self, index, *rest)
                                                    and not bypassed.append(self.sites[index].module_type)))
    spec = nora.NoiseSpec(activation=noise, noise_mode=mode, policy=policy or nora.SitePolicy())
    with nora.attach(model, spec, seed=3, example_input=x[:2]):
        loss = model(x).square().mean()
        loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads, bypassed


@pytest.mark.parametrize("mode", ["fast", "exact"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_additive_training_noise_bypasses_the_graph_only_where_no_backward_reads_the_output(mode, batch_norm,
                                                                                           monkeypatch):
    """Under autograd, additive noise goes into conv, linear, pool and batch-norm outputs in place
    with no graph node (their backwards read only their inputs, and the noise's gradient is the
    identity): the loss and every gradient are the bits of the graph path. ReLU outputs (read by
    ReLU's backward), the input, multiplicative noise and a user's own layer keep the graph."""
    torch.manual_seed(0)
    model = build_model("lenet5", batch_norm=batch_norm).train()
    x = torch.randn(16, 1, 28, 28)
    fast = _noisy_step(model, GaussianAdditive(0.3), mode, x, True, monkeypatch)
    reference = _noisy_step(model, GaussianAdditive(0.3), mode, x, False, monkeypatch)
    assert torch.equal(fast[0], reference[0])
    assert all(torch.equal(a, b) for a, b in zip(fast[1], reference[1]))
    expected = ["Conv2d", "MaxPool2d"] * 2 + ["Linear"] * 3
    if batch_norm:
        expected[1:1], expected[4:4], expected[7:7], expected[9:9] = ["BatchNorm2d"], ["BatchNorm2d"], ["BatchNorm1d"], ["BatchNorm1d"]
    assert fast[2] == expected
    assert _noisy_step(model, GaussianMultiplicative(0.3), mode, x, True, monkeypatch)[2] == []
    own_layer = _noisy_step(nn.Sequential(KeepsOutput(), nn.Linear(6, 2)), GaussianAdditive(0.3), mode,
                            torch.randn(4, 6), True, monkeypatch, nora.SitePolicy(extra=(KeepsOutput,)))
    assert own_layer[2] == ["Linear"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_a_traced_noisy_model_keeps_the_graph(monkeypatch):
    """Under ``torch.jit.trace`` the noise goes through the graph the tracer records."""
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    x = torch.randn(4, 6)
    assert _noisy_step(model, GaussianAdditive(0.3), "fast", x, True, monkeypatch)[2] == ["Linear", "Linear"]
    with nora.attach(model, GaussianAdditive(0.3), seed=3, example_input=x[:2]):
        decided = []
        monkeypatch.setattr(NoiseInjector, "_adds_outside_graph",
                            lambda self, *args: decided.append(_ADDS_OUTSIDE_GRAPH(self, *args)) or decided[-1])
        torch.jit.trace(model, x, check_trace=False)
    assert decided == [False, False]


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_noise_written_outside_the_graph_bumps_the_version(mode):
    """A graph-free write bumps the tensor's version, so autograd's own check would catch any saved use."""
    x = torch.randn(4, 3000, requires_grad=True)
    y = x * 2
    saved = y.sin()  # sin's backward reads y
    before = y._version
    with torch.no_grad():
        nora.noise.make_stream(7, mode).add_scaled(y, 0.5, True)
    assert y._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


def test_double_attach_is_refused():
    model = nn.Sequential(nn.ReLU())
    with nora.attach(model, GaussianAdditive(0.1)):
        with pytest.raises(NoraError, match="already has noise"):
            nora.attach(model, GaussianAdditive(0.1))


def test_control_flow_change_is_reported():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.act(x)) if x.shape[0] > 2 else self.act(x)

    model = Branchy()
    with nora.attach(model, GaussianAdditive(0.1), example_input=torch.zeros(2, 3)):
        with pytest.raises(NoraError, match="site calls"):
            model(torch.zeros(4, 3))


def test_weight_noise_and_clamping():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 50))
    stored = model[0].weight.detach().clone()
    x = torch.eye(50)
    with nora.WeightNoise(model, GaussianAdditive(0.05), seed=0):
        first, second = model[0].weight.detach().clone(), model[0].weight.detach().clone()
        assert not torch.equal(first, second)  # fresh draw on every access
        assert float((first - stored).std()) == pytest.approx(0.05, rel=0.1)
    assert torch.equal(model[0].weight, stored)
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0)
    nora.clamp_after_step(optimizer, model, -1.0, 1.0)
    model(x).pow(2).sum().backward()
    optimizer.step()
    assert float(model[0].weight.abs().max()) <= 1.0
    assert float(model[0].weight.abs().max()) == 1.0


def test_compute_override_replaces_a_layer_and_keeps_sites():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(2, 4)

    def doubled(module, inp):
        return 2 * nn.functional.linear(inp, module.weight, module.bias)

    clean = model[0](x)
    with nora.override_compute(model, doubled, ["0"]):
        assert torch.allclose(model[0](x), 2 * clean)
        assert len(nora.sites(model, x)) == 3
    assert torch.allclose(model[0](x), clean)
    with pytest.raises(NoraError, match="not of a supported type"):
        nora.override_compute(model, doubled, ["1"])
