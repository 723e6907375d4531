"""Quantisation-aware models: bit widths, constant vs learned scales, noise sites after the quantised
activation, checkpoint round trips and the error when Brevitas is missing."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from nora.config import parse_config
from nora.errors import NoraError
from nora.models import build_model, list_models
from nora.noise import GaussianAdditive
from nora.quant import QuantConfig, act_multiplier, quantised_layers
from nora.sim import attach, discover_sites
from nora.train import train
from nora.train.checkpoint import load_model, save_model

QUANTISED = ["autoencoder-qat", "kws-mlp-w3a3", "lenet5-qat", "mlp-qat", "resnet8-qat"]
SMALL = {
    "lenet5-qat": {"input_shape": (1, 8, 8)},
    "mlp-qat": {"hidden": (16, 16), "batch_norm": True},
    "resnet8-qat": {"input_shape": (3, 8, 8), "num_classes": 4},
    "kws-mlp-w3a3": {"num_classes": 10},
    "autoencoder-qat": {"hidden": 16, "bottleneck": 4, "input_shape": (40,)},
}


def relus(model):
    return [m for m in model.modules() if type(m).__name__ == "QuantReLU"]


def test_quantised_builders_are_registered():
    assert set(QUANTISED) <= set(list_models())


def test_research_multipliers():
    assert [act_multiplier(b) for b in (4, 8, 16)] == [15, 256, 65536]
    assert act_multiplier(3) == 7  # KWS W3A3: act_scale 1/7 gives the reference range [0, 1]
    options = {"weight_bits": None, "scaling": "const", "input_bits": None, "input_max": 4.0}
    assert QuantConfig.from_options("t", bits=4, act_scale=0.1, **options).act_max == pytest.approx(1.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 12}, "unsupported bit width bits=12"),
        ({"bits": 0}, "unsupported bit width bits=0"),
        ({"bits": 1}, "unsupported bit width bits=1"),  # bipolar only for weights
        ({"bits": 8.0}, "unsupported bit width bits=8.0"),
        ({"bits": True}, "unsupported bit width bits=True"),
        ({"weight_bits": 32}, "unsupported bit width weight_bits=32"),
        ({"input_bits": 9}, "unsupported bit width input_bits=9"),
        ({"scaling": "dynamic"}, "scaling must be one of const, learned"),
        ({"act_scale": 0}, "act_scale must be a positive number"),
        ({"act_scale": float("inf")}, "act_scale must be a positive number"),
    ],
)
def test_bad_quantisation_options(kwargs, message):
    with pytest.raises(NoraError, match=message):
        build_model("lenet5-qat", input_shape=(1, 8, 8), **kwargs)


@pytest.mark.parametrize("name", QUANTISED)
def test_quantised_models_build_train_and_rebuild(name):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name])
    x = torch.randn(4, *model.input_shape)
    out = model(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert quantised_layers(model)
    twin = build_model(model.arch, **model.arch_kwargs)
    assert twin.arch_kwargs == model.arch_kwargs


def test_constant_scale_activations_sit_on_the_grid_and_clip():
    torch.manual_seed(0)
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), bits=4, act_scale=0.1).eval()
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for m in relus(model)]
    model(10 * torch.randn(16, 1, 8, 8))
    for hook in hooks:
        hook.remove()
    step = 1.5 / 15  # 4 bits: max_val = 15 * 0.1, 15 steps below it
    for out in outputs:
        levels = out / step
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert out.min() >= 0 and out.max() <= 1.5 + 1e-6
    assert any(float(out.max()) == pytest.approx(1.5) for out in outputs)  # large inputs are clipped at max_val
    assert not any(p.requires_grad for m in relus(model) for p in m.parameters())


def test_learned_scale_is_a_trained_parameter():
    torch.manual_seed(0)
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), scaling="learned", act_scale=0.05)
    scales = [p for m in relus(model) for p in m.parameters()]
    assert len(scales) == 4  # one clipping value per ReLU, learned as log2(max_val)
    assert all(float(p.detach()) == pytest.approx(math.log2(256 * 0.05)) for p in scales)
    assert all(float(m.act_quant.scale().detach() * 255) == pytest.approx(256 * 0.05) for m in relus(model))
    model(torch.randn(8, 1, 8, 8)).square().mean().backward()
    assert all(p.grad is not None and float(p.grad.abs()) > 0 for p in scales)


def test_weight_scales_per_channel_for_convs_per_tensor_for_linear():
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), weight_bits=4)
    conv, linear = model.features[0], model.classifier[1]
    conv_weight, linear_weight = conv.quant_weight(), linear.quant_weight()
    assert conv_weight.scale.numel() == conv.out_channels
    assert linear_weight.scale.numel() == 1
    for layer, quantised in ((conv, conv_weight), (linear, linear_weight)):
        levels = quantised.value / quantised.scale
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert levels.abs().max() <= 7  # 4-bit narrow range: -7..7
        # statistics-based scale: the largest |w| (per channel for convs) maps to the top level
        expected = layer.weight.detach().abs().flatten(1).amax(1) if layer is conv else layer.weight.detach().abs().max()
        assert torch.allclose(quantised.scale.flatten(), (expected / 7).flatten(), rtol=1e-5)


TRAINABLE = [
    (name, preset, extra)
    for name in QUANTISED
    for preset in ("research", "fpga")
    for extra in ({}, {"weight_bits": 1}, {"bits": 4, "act_scale": 0.25, "scaling": "learned"})
]


@pytest.mark.parametrize("name, preset, extra", TRAINABLE)
def test_every_quantised_builder_trains(name, preset, extra):
    """A backward pass and a few optimiser steps for every builder, preset, bipolar weights and
    learned scales: the loss stays finite, every trained tensor moves, the training loss falls."""
    torch.manual_seed(0)
    kwargs = SMALL[name] | extra
    if name == "kws-mlp-w3a3" and "bits" in extra:
        kwargs["weight_bits"] = 3
    model = build_model(name, preset=preset, **kwargs)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, *model.input_shape, generator=generator)
    target = x if model.num_classes is None else torch.randint(0, model.num_classes, (16,), generator=generator)
    loss_fn = torch.nn.MSELoss() if model.num_classes is None else torch.nn.CrossEntropyLoss()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        optimiser.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert min(losses[1:]) < losses[0]
    moved = [k for k, v in model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert any("weight" in k for k in moved)


def is_power_of_two(t: torch.Tensor) -> bool:
    mantissa, _ = torch.frexp(t.detach().double())
    return bool((mantissa == 0.5).all())


@pytest.mark.parametrize("scaling", ["const", "learned"])
def test_fpga_preset_scales_are_powers_of_two(scaling):
    torch.manual_seed(0)
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), bits=4, act_scale=0.125, scaling=scaling,
                        input_bits=8, input_max=4.0, preset="fpga")
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):  # learned scales must stay powers of two while they move
        optimiser.zero_grad()
        model(3 * torch.randn(8, 1, 8, 8)).square().mean().backward()
        optimiser.step()
    model.eval()
    for relu in relus(model):
        scale = relu.act_quant.scale()
        assert is_power_of_two(scale)
        if scaling == "const":
            assert float(scale) == 0.125
        assert float(relu(torch.tensor([1e3]))) == 15 * float(scale)  # clip = (2**bits - 1) * step
    assert float(model.input_quant.act_quant.scale()) == 4.0 / 128
    for layer in (model.features[0], model.features[3], model.classifier[1]):
        weight = layer.quant_weight()
        assert weight.scale.numel() == 1 and is_power_of_two(weight.scale)  # per tensor, power of two
        assert float(weight.scale) * 8 >= float(layer.weight.detach().abs().max())  # threshold 2**k >= max |w|
        bias = layer.quant_bias()
        assert is_power_of_two(bias.scale)


@pytest.mark.parametrize("kwargs, message", [
    ({"act_scale": 0.1}, "preset fpga needs act_scale .* power of two, got 0.1; the nearest is 0.125"),
    ({"input_bits": 8, "input_max": 3.0}, "input step .* power of two, got 0.0234375 .*use input_max=4"),
    ({"preset": "asic"}, "preset must be one of research, fpga"),
])
def test_bad_fpga_options(kwargs, message):
    with pytest.raises(NoraError, match=message):
        build_model("lenet5-qat", input_shape=(1, 8, 8), **({"preset": "fpga"} | kwargs))


def test_research_activation_step_keeps_the_research_multiplier():
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), bits=8, act_scale=1 / 16)
    assert float(relus(model)[0].act_quant.scale()) == pytest.approx(16 / 255)  # M[8] = 256 over 255 steps
    fpga = build_model("lenet5-qat", input_shape=(1, 8, 8), bits=8, act_scale=1 / 16, preset="fpga")
    assert float(relus(fpga)[0].act_quant.scale()) == 1 / 16


def test_bipolar_weights():
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), weight_bits=1)
    quantised = model.layers[1].quant_weight()
    assert set(torch.unique(quantised.value / quantised.scale).tolist()) == {-1.0, 1.0}
    assert [layer.weight_bits for layer in quantised_layers(model) if layer.weight_bits] == [1, 1]


def test_sites_match_the_float_model_and_sit_after_the_quantised_relu():
    for kwargs, count in (({}, 12), ({"batch_norm": True}, 16)):
        float_sites = discover_sites(build_model("lenet5", **kwargs), torch.zeros(2, 1, 28, 28))
        quant_sites = discover_sites(build_model("lenet5-qat", **kwargs), torch.zeros(2, 1, 28, 28))
        assert len(quant_sites) == len(float_sites) == count
        assert [s.name for s in quant_sites] == [s.name for s in float_sites]
    types = [s.module_type for s in quant_sites]
    assert types.count("QuantReLU") == 4 and "ReLU" not in types


@pytest.mark.parametrize("float_arch, quant_arch, kwargs", [
    ("resnet8", "resnet8-qat", {"input_shape": (3, 8, 8)}),
    ("lenet5", "lenet5-qat", {"input_shape": (1, 8, 8), "batch_norm": True}),
    ("autoencoder", "autoencoder-qat", {"input_shape": (40,), "hidden": 16, "bottleneck": 4}),
])
@pytest.mark.parametrize("preset", ["research", "fpga"])
def test_qat_sites_match_float_twin(float_arch, quant_arch, kwargs, preset):
    """Same indices and names: the input quantiser is part of the input site, not a site of its own."""
    float_model = build_model(float_arch, **kwargs)
    quant_model = build_model(quant_arch, preset=preset, **({"input_bits": 8} | kwargs))
    assert quant_model.nora_site_hints.exclude == ("input_quant",)
    x = torch.zeros(2, *float_model.input_shape)
    float_sites, quant_sites = discover_sites(float_model, x), discover_sites(quant_model, x)
    assert [(s.index, s.name) for s in quant_sites] == [(s.index, s.name) for s in float_sites]
    assert "QuantIdentity" not in [s.module_type for s in quant_sites]
    assert set(dict(quant_model.named_modules())) - set(dict(float_model.named_modules())) <= {
        name for name, _ in quant_model.named_modules() if name == "input_quant" or ".act_quant" in name
        or "_quant." in name or name.endswith("_quant")}


BLOCK_PAIRS = [("conv1", "bn1"), ("conv2", "bn2")]
SHORTCUT_PAIR = [("shortcut.0", "shortcut.1")]  # blocks 1 and 2 change width and stride: 1x1 conv + BN
RESNET_PAIRS = [("conv1", "bn1")] + [(f"layers.{i}.0.{conv}", f"layers.{i}.0.{norm}") for i in range(3)
                                     for conv, norm in BLOCK_PAIRS + (SHORTCUT_PAIR if i else [])]


def folded_convs(model):
    from nora.quant.layers import FoldedQuantConv2d

    names = {id(m): n for n, m in model.named_modules()}
    return [(n, names[id(m.norm)]) for n, m in model.named_modules() if isinstance(m, FoldedQuantConv2d)]


def test_fpga_resnet8_folds_every_batch_norm_into_its_conv():
    """fpga ResNet-8: each conv and the BatchNorm after it are one layer (no float layer between
    quantisers); the BatchNorm module stays a pass-through holding its parameters, so the checkpoint
    keys equal the unfolded model's. Research and bipolar models keep the float BatchNorm."""
    torch.manual_seed(0)
    model = build_model("resnet8-qat", preset="fpga", **SMALL["resnet8-qat"])
    assert folded_convs(model) == RESNET_PAIRS
    torch.manual_seed(0)
    unfolded = build_model("resnet8-qat", preset="fpga", fold_batch_norm=False, **SMALL["resnet8-qat"])
    assert set(model.state_dict()) == set(unfolded.state_dict())
    for kwargs in ({"preset": "research"}, {"preset": "fpga", "weight_bits": 1}):
        assert folded_convs(build_model("resnet8-qat", **SMALL["resnet8-qat"], **kwargs)) == []


def test_folded_conv_trains_with_batch_statistics_and_evaluates_as_one_conv():
    torch.manual_seed(0)
    model = build_model("resnet8-qat", preset="fpga", **SMALL["resnet8-qat"])
    conv, norm = model.layers[1][0].conv1, model.layers[1][0].bn1
    x = torch.randn(32, 16, 8, 8, generator=torch.Generator().manual_seed(0)).relu()
    model.train()
    out = conv(x).detach()
    assert norm(out) is out and int(norm.num_batches_tracked) == 1  # the conv normalised and updated the statistics
    assert out.mean((0, 2, 3)).abs().max() < 1e-5  # batch-normalised: beta = 0, gamma = 1 at initialisation
    assert torch.allclose(out.var((0, 2, 3), unbiased=False), torch.ones(32), rtol=1e-3)
    assert float(norm.running_var.sub(1).abs().max()) > 0
    model.eval()
    with torch.no_grad():
        folded = conv(x)
        unquantised = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1),
                                                     norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                                     eps=norm.eps)
    assert float((folded - unquantised).abs().max()) < 0.02 * float(unquantised.abs().max())  # 8-bit weights
    weight, _ = conv.folded_parameters()
    step = conv.weight_quant(weight).scale
    assert torch.equal(conv.weight_quant(weight).value / step, (weight / step).round().clamp(-127, 127))


def test_folded_model_copies_and_round_trips(tmp_path):
    """A copy's convs fold the copy's BatchNorms (export works on a copy); a checkpoint gives the same outputs."""
    import copy

    torch.manual_seed(0)
    model = build_model("resnet8-qat", preset="fpga", **SMALL["resnet8-qat"])
    model.train()
    model(torch.randn(16, 3, 8, 8))
    model.eval()
    twin = copy.deepcopy(model)
    assert folded_convs(twin) == RESNET_PAIRS and twin.conv1.norm is twin.bn1
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = twin(x)
        model.bn1.weight.mul_(2)
        assert torch.equal(twin(x), before) and not torch.equal(model(x), before)
    save_model(tmp_path, model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    loaded, _ = load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"fold_batch_norm": True}, "fold_batch_norm needs preset fpga"),
    ({"fold_batch_norm": True, "preset": "fpga", "weight_bits": 1}, "fold_batch_norm needs weight_bits >= 2"),
    ({"fold_batch_norm": "yes", "preset": "fpga"}, "fold_batch_norm must be true or false, got 'yes'"),
])
def test_bad_fold_options(kwargs, message):
    with pytest.raises(NoraError, match=message):
        build_model("resnet8-qat", input_shape=(3, 8, 8), **kwargs)


def test_building_quantised_models_changes_no_global_state():
    import nora.sim.sites as sites

    before = list(getattr(sites, "_REGISTERED_SITE_TYPES", []))
    build_model("lenet5-qat", input_shape=(1, 8, 8))
    assert list(getattr(sites, "_REGISTERED_SITE_TYPES", [])) == before
    float_sites = discover_sites(build_model("lenet5", input_shape=(1, 8, 8)), torch.zeros(1, 1, 8, 8))
    assert "QuantReLU" not in [s.module_type for s in float_sites]


def test_noise_lands_after_quantisation():
    torch.manual_seed(0)
    model = build_model("lenet5-qat", input_shape=(1, 8, 8), bits=4, act_scale=0.1).eval()
    pooled_inputs = []
    model.features[2].register_forward_pre_hook(lambda _m, args: pooled_inputs.append(args[0].detach()))
    x = torch.rand(4, 1, 8, 8)
    step = 0.1 * 15 / 15
    model(x)
    clean = pooled_inputs.pop()
    assert torch.allclose(clean / step, (clean / step).round(), atol=1e-4)
    with attach(model, GaussianAdditive(0.01), sites="features.1", example_input=x[:2], seed=0):
        model(x)
    noisy = pooled_inputs.pop()
    off_grid = (noisy / step - (noisy / step).round()).abs() > 1e-3
    assert off_grid.float().mean() > 0.9  # the noise was added to the quantised values, not before
    assert float((noisy - clean).std()) == pytest.approx(0.01, rel=0.1)


def test_checkpoint_round_trip_through_training(tmp_path):
    config = parse_config({
        "name": "qat", "output_dir": str(tmp_path), "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "train_subset": 256, "test_subset": 64},
        "model": {"arch": "lenet5-qat", "kwargs": {"scaling": "learned", "bits": 4, "act_scale": 0.2}},
        "train": {"epochs": 1, "progress": False},
        "train_noise": {"kind": "additive", "sigma": 0.1},
    }, "test")
    result = train(config)
    loaded, meta = load_model(result.run_dir)
    assert meta["arch"] == "lenet5-qat" and meta["arch_kwargs"]["scaling"] == "learned"
    scale_keys = [k for k in loaded.state_dict() if "scaling_impl.value" in k]
    assert len(scale_keys) == 4
    trained_scales = [float(result.model.state_dict()[k]) for k in scale_keys]
    assert any(s != pytest.approx(math.log2(15 * 0.2)) for s in trained_scales)  # learned: moved in training
    x = torch.rand(16, 1, 8, 8)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_round_trip_with_input_quantiser_and_batch_norm(tmp_path):
    torch.manual_seed(1)
    model = build_model("kws-mlp-w3a3", num_classes=10)
    model.train()
    model(torch.randn(32, 1, 10, 49))  # moves the BatchNorm statistics away from their initial values
    model.eval()
    save_model(tmp_path, model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    loaded, _ = load_model(tmp_path)
    x = torch.randn(8, 1, 10, 49)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_same_seed_same_model():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model("lenet5-qat", input_shape=(1, 8, 8)).eval()
        outputs.append(model(torch.ones(2, 1, 8, 8)))
    assert torch.equal(*outputs)


def test_qat_starts_from_the_float_initialisation():
    torch.manual_seed(5)
    float_model = build_model("lenet5", input_shape=(1, 8, 8))
    torch.manual_seed(5)
    quant_model = build_model("lenet5-qat", input_shape=(1, 8, 8))
    assert torch.equal(float_model.features[0].weight, quant_model.features[0].weight)


def test_missing_brevitas_says_which_extra_to_install(monkeypatch):
    import nora.quant

    monkeypatch.delattr(nora.quant, "layers", raising=False)  # forget the loaded Brevitas layers
    monkeypatch.delitem(sys.modules, "nora.quant.layers", raising=False)
    monkeypatch.setitem(sys.modules, "brevitas.nn", None)  # what an absent package looks like to import
    with pytest.raises(NoraError, match=r"'brevitas' package.*install nora\[export\]"):
        build_model("lenet5-qat")


@pytest.mark.parametrize("example", [
    "mnist_lenet5_qat8_const.yaml",
    "qat_mnist_lenet5_learned.yaml",
    "qat_mnist_lenet5_bipolar.yaml",
    "qat_resnet8_cifar10.yaml",
    "kws_mlp_w3a3_fsdd.yaml",
    "mnist_lenet5_qat8_fpga.yaml",
    "qat_resnet8_cifar10_fpga.yaml",
    "kws_mlp_w3a3_fpga.yaml",
])
def test_example_configs_build_their_models(example):
    from pathlib import Path

    from nora.config import load_config
    from nora.data import dataset_info

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / example)
    info = dataset_info(config.data.dataset)
    model = build_model(config.model.arch, input_shape=info["input_shape"], num_classes=info["num_classes"],
                        **config.model.kwargs)
    assert quantised_layers(model)
    assert model(torch.zeros(2, *info["input_shape"])).shape == (2, info["num_classes"])


@pytest.mark.slow
@pytest.mark.parametrize("example", [
    "mnist_lenet5_qat8_const.yaml",
    "qat_mnist_lenet5_learned.yaml",
    "qat_mnist_lenet5_bipolar.yaml",
    "mnist_lenet5_qat8_fpga.yaml",
])
def test_example_configs_learn_on_a_subset(example, shared_data, tmp_path):
    """The MNIST QAT examples learn: 2 epochs on 1,024 training images reach far above chance (0.1;
    a dead network, as act_scale 4 gave, stays at 0.10)."""
    from pathlib import Path

    from nora.config import apply_overrides, load_config

    config = load_config(Path(__file__).resolve().parents[1] / "examples" / example)
    config = apply_overrides(config, {
        "data.root": str(shared_data / "mnist"), "data.train_subset": 1024, "data.test_subset": 500,
        "data.batch_size": 64, "train.epochs": 2, "train.progress": False, "output_dir": str(tmp_path)})
    result = train(config)
    assert result.metrics[-1]["test_accuracy"] > 0.4
