"""Model zoo: every registered model builds, trains, has the documented sites, and rebuilds by name."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nora.errors import NoraError
from nora.models import LeNet5, build_model, list_models, model_defaults, register_model
from nora.models import registry
from nora.models.common import MaxPool2d
from nora.sim.sites import discover_sites

torch.set_num_threads(1)

EXPECTED_MODELS = {"autoencoder", "kws-cnn-s", "kws-mlp", "lenet5", "mlp", "resnet18", "resnet8", "vgg11"}
QAT_MODELS = {"autoencoder-qat", "kws-mlp-w3a3", "lenet5-qat", "mlp-qat", "resnet8-qat"}  # tested in test_quant.py
MEMBER_MODELS = {"ensemble", "mcdropout", "multihead"}  # tested in test_uncertainty_models.py

#: Small variants for tests that build a model several times.
QUICK_KWARGS = {
    "mlp": {"hidden": (32, 16), "batch_norm": True, "dropout": 0.2},
    "lenet5": {"input_shape": (3, 32, 32), "batch_norm": True, "pool": "avg"},
    "vgg11": {"width_mult": 0.125},
    "resnet18": {"width": 8},
    "resnet8": {"num_classes": 5},
    "kws-cnn-s": {"num_classes": 10},
    "kws-mlp": {"input_shape": (1, 10, 20)},
    "autoencoder": {"hidden": 16, "bottleneck": 4},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sites_of(model: nn.Module):
    return discover_sites(model, torch.zeros(2, *model.input_shape))


def test_registry_lists_every_model():
    assert set(list_models()) == EXPECTED_MODELS | QAT_MODELS | MEMBER_MODELS
    assert list_models() == sorted(list_models())
    assert set(QUICK_KWARGS) == EXPECTED_MODELS


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_default_build_forward_backward(name):
    torch.manual_seed(0)
    model = build_model(name)
    defaults = model_defaults(name)
    assert model.arch == name
    assert model.input_shape == tuple(defaults["input_shape"])
    assert model.num_classes == defaults["num_classes"]
    x = torch.randn(2, *model.input_shape)
    out = model(x)
    expected = (2, 640) if name == "autoencoder" else (2, model.num_classes)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


def test_default_shapes_and_classes():
    assert model_defaults("mlp")["input_shape"] == (1, 28, 28)
    assert model_defaults("vgg11")["input_shape"] == (3, 32, 32)
    assert model_defaults("kws-cnn-s")["input_shape"] == (1, 10, 49)
    assert model_defaults("kws-cnn-s")["num_classes"] == 12
    assert model_defaults("kws-mlp")["num_classes"] == 12
    assert model_defaults("autoencoder")["input_shape"] == (640,)
    assert model_defaults("autoencoder")["num_classes"] is None
    assert build_model("autoencoder").num_classes is None
    assert build_model("kws-cnn-s", num_classes=10)(torch.zeros(2, 1, 10, 49)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, kwargs, count",
    [
        ("mlp", {}, 8),
        ("mlp", {"batch_norm": True}, 11),
        ("mlp", {"dropout": 0.5}, 8),  # dropout is not a site
        ("lenet5", {}, 12),
        ("lenet5", {"batch_norm": True}, 16),
        ("lenet5", {"pool": "avg"}, 12),
        ("lenet5", {"input_shape": (3, 32, 32)}, 12),
        ("lenet5", {"input_shape": (1, 8, 8)}, 12),
        ("lenet5", {"input_shape": (1, 8, 8), "batch_norm": True}, 16),
        ("kws-mlp", {}, 11),
        ("kws-cnn-s", {}, 11),
        ("resnet8", {}, 28),
        ("autoencoder", {}, 29),
    ],
)
def test_site_counts(name, kwargs, count):
    sites = sites_of(build_model(name, **kwargs))
    assert len(sites) == count
    assert sites[0].name == "input"


def test_mlp_site_order_with_batch_norm():
    types = [s.module_type for s in sites_of(build_model("mlp", batch_norm=True))]
    assert types == ["Input"] + ["Linear", "BatchNorm1d", "ReLU"] * 3 + ["Linear"]


def test_lenet5_small_and_cifar_inputs():
    digits = build_model("lenet5", input_shape=(1, 8, 8))
    # padding 2 keeps 8x8 through both convs: 8 -> 8 -> pool 4 -> 4 -> pool 2, so 16 * 2 * 2 features.
    assert digits.classifier[1].in_features == 64
    assert digits(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    cifar = build_model("lenet5", input_shape=(3, 32, 32))
    assert cifar.features[0].padding == (0, 0)
    assert cifar.classifier[1].in_features == 16 * 5 * 5
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    shapes = [s.output_shape for s in sites_of(cifar)]
    assert shapes[:4] == [(3, 32, 32), (6, 28, 28), (6, 28, 28), (6, 14, 14)]


def test_kws_cnn_layer_shapes():
    sites = sites_of(build_model("kws-cnn-s"))
    convs = [s.output_shape for s in sites if s.module_type == "Conv2d"]
    assert convs == [(28, 7, 40), (30, 4, 16)]
    linears = [s.output_shape for s in sites if s.module_type == "Linear"]
    assert linears == [(16,), (128,), (12,)]


def test_resnet8_reused_relu_is_two_sites():
    model = build_model("resnet8")
    sites = sites_of(model)
    for stage in range(3):
        block = f"layers.{stage}.0"
        relu = [s for s in sites if s.module_name == f"{block}.relu"]
        assert [s.name for s in relu] == [f"{block}.relu#0", f"{block}.relu#1"]
        assert [s.call for s in relu] == [0, 1]
        # The second call comes after the residual add, i.e. after the block's last BN / shortcut.
        last_bn = max(s.index for s in sites if s.module_name.startswith(block) and s.module_type == "BatchNorm2d")
        assert relu[1].index == last_bn + 1
    assert [s.name for s in sites if s.module_name == "relu"] == ["relu"]
    shortcuts = [s.output_shape for s in sites if ".shortcut." in s.name and s.module_type == "Conv2d"]
    assert shortcuts == [(32, 16, 16), (64, 8, 8)]
    assert sites[-1].output_shape == (10,)


def test_mlp_width_and_hidden():
    assert [m.out_features for m in build_model("mlp", width=128).modules() if isinstance(m, nn.Linear)] == [
        128, 128, 128, 10,
    ]
    assert [m.out_features for m in build_model("mlp", hidden=[32]).modules() if isinstance(m, nn.Linear)] == [32, 10]


def test_width_options_shrink_models():
    assert n_params(build_model("vgg11", width_mult=0.125)) < n_params(build_model("vgg11")) / 30
    small = build_model("resnet18", width=8)
    assert small.fc.in_features == 64
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "errors must be one line"
    return text


def test_unknown_model_name():
    with pytest.raises(NoraError) as excinfo:
        build_model("lenet")
    text = _message(excinfo)
    assert "'lenet'" in text and "did you mean 'lenet5'" in text
    assert all(name in text for name in EXPECTED_MODELS)
    with pytest.raises(NoraError):
        model_defaults("nope")


def test_unknown_option():
    with pytest.raises(NoraError) as excinfo:
        build_model("mlp", depth=3)
    text = _message(excinfo)
    assert "'depth'" in text and "batch_norm" in text and "dropout" in text and "input_shape" in text
    with pytest.raises(NoraError, match="'width'.*accepted: input_shape, num_classes$"):
        build_model("kws-cnn-s", width=3)


@pytest.mark.parametrize(
    "name, kwargs, fragment",
    [
        ("lenet5", {"input_shape": (1, 3, 3)}, "cannot run on input_shape"),
        ("lenet5", {"input_shape": (28, 28)}, "(channels, height, width)"),
        ("vgg11", {"input_shape": (3, 16, 16)}, "cannot run on input_shape"),
        ("kws-cnn-s", {"input_shape": (1, 3, 49)}, "cannot run on input_shape"),
        ("resnet8", {"input_shape": (3, 0, 32)}, "positive integers"),
        ("mlp", {"input_shape": "1x28x28"}, "positive integers"),
        ("mlp", {"num_classes": 0}, "num_classes"),
        ("mlp", {"dropout": 1.5}, "dropout"),
        ("mlp", {"width": -4}, "width"),
        ("mlp", {"batch_norm": "yes"}, "batch_norm"),
        ("lenet5", {"pool": "min"}, "pool must be one of max, avg"),
        ("vgg11", {"width_mult": 0}, "width_mult"),
        ("autoencoder", {"num_classes": 3}, "num_classes"),
        ("mlp", {"hidden": [object()]}, "hidden"),
    ],
)
def test_bad_arguments(name, kwargs, fragment):
    with pytest.raises(NoraError) as excinfo:
        build_model(name, **kwargs)
    assert fragment in _message(excinfo)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_rebuild_from_arch_kwargs(name):
    model = build_model(name, **QUICK_KWARGS[name])
    saved = json.loads(json.dumps({"arch": model.arch, "arch_kwargs": model.arch_kwargs}))
    assert set(saved["arch_kwargs"]) == set(model_defaults(name))  # every default is recorded
    rebuilt = build_model(saved["arch"], **saved["arch_kwargs"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert rebuilt.arch_kwargs == model.arch_kwargs
    assert rebuilt.input_shape == model.input_shape and rebuilt.num_classes == model.num_classes
    rebuilt.load_state_dict(model.state_dict())


def test_init_follows_global_seed():
    torch.manual_seed(1)
    a = build_model("lenet5").state_dict()
    torch.manual_seed(1)
    b = build_model("lenet5").state_dict()
    c = build_model("lenet5").state_dict()  # no reseed: builders must not seed themselves
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def test_parameter_counts():
    # MLP 784-64-64-64-10: 784*64+64 + 2*(64*64+64) + 64*10+10 = 50240 + 8320 + 650.
    assert n_params(build_model("mlp")) == 59_210
    # The often quoted 61,706 is LeNet-5 on 32x32 input (16x5x5 = 400 features into fc120). On 28x28
    # MNIST without padding the convs leave 16x4x4 = 256 features: 156 + 2416 + (256*120+120) + 10164 + 850.
    assert n_params(build_model("lenet5")) == 44_426
    assert n_params(build_model("lenet5", input_shape=(1, 32, 32))) == 61_706
    assert n_params(LeNet5((1, 32, 32))) == 61_706  # the classes work without the registry too
    # The standard CIFAR ResNet-18 figure.
    assert n_params(build_model("resnet18")) == 11_173_962


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @register_model("tiny")
    def tiny(input_shape=(4,), num_classes=2, scale=1.0):
        return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))  # accepts any scale

    model = build_model("tiny", scale=2.0)
    assert "tiny" in list_models()
    assert (model.arch, model.arch_kwargs) == ("tiny", {"input_shape": [4], "num_classes": 2, "scale": 2.0})
    assert model.input_shape == (4,) and model.num_classes == 2
    with pytest.raises(NoraError, match="option scale must be a plain JSON value"):
        build_model("tiny", scale=object())  # a checkpoint could not record it
    with pytest.raises(NoraError, match="already registered"):
        register_model("tiny")(tiny)
    with pytest.raises(NoraError, match="num_classes"):
        register_model("broken")(lambda input_shape=(4,): nn.Linear(4, 2))
    with pytest.raises(NoraError, match="no default: depth"):
        register_model("broken")(lambda depth, input_shape=(4,), num_classes=2: nn.Linear(4, 2))


def test_strided_max_pool_is_torchs_pool_in_values_gradients_and_export(tmp_path):
    """LeNet-5's and VGG's 2x2 max pool: in inference the same values as torch's kernel (odd sizes
    floor, NaN propagates, 3-D inputs); while autograd records the same gradients on ties (the
    strided maximum would split them); exported, torch's MaxPool node."""
    pool = MaxPool2d(2)
    x = torch.randn(3, 6, 25, 24, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        for value in (x, x[0], x.relu()):
            assert torch.equal(pool(value).nan_to_num(9.0), nn.functional.max_pool2d(value, 2).nan_to_num(9.0))
    ties = torch.zeros(1, 1, 4, 4, requires_grad=True)
    pool(ties).sum().backward()
    reference = torch.zeros(1, 1, 4, 4, requires_grad=True)
    nn.functional.max_pool2d(reference, 2).sum().backward()
    assert torch.equal(ties.grad, reference.grad) and ties.grad.sum() == 4
    model = build_model("lenet5").eval()
    assert sum(isinstance(m, MaxPool2d) for m in model.modules()) == 2
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "lenet5.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("MaxPool") == 2
