"""A user's own model (``module:Factory`` or ``file.py:Factory``) on the same footing as the zoo."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from nora.errors import NoraError
from nora.models import build_model, model_defaults
from nora.train import checkpoint

MODEL_FILE = textwrap.dedent("""
    import math
    from torch import nn

    class Net(nn.Module):
        '''Takes input_shape and num_classes, so nora passes them.'''
        def __init__(self, input_shape, num_classes, hidden=16):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                      nn.Linear(hidden, num_classes))

        def forward(self, x):
            return self.body(x)

    def fixed(width=8):
        '''Takes neither: nora finds its class count by a dry run.'''
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def not_a_module():
        return 42

    def broken(input_shape, num_classes):
        raise ValueError("hidden size must be even")

    def needs(depth, input_shape=(1, 8, 8), num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def pair(input_shape, num_classes):
        class Two(nn.Module):
            def forward(self, x):
                return x.flatten(1)[:, :num_classes], x
        return Two()

    CONSTANT = 3
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def test_file_factory_gets_shape_and_classes_and_is_stamped(model_file):
    model = build_model(f"{model_file}:Net", input_shape=(1, 8, 8), num_classes=10, hidden=4)
    assert isinstance(model, nn.Module) and model.body[1].out_features == 4
    assert model.arch == f"{model_file.resolve()}:Net"
    assert model.arch_kwargs == {"input_shape": [1, 8, 8], "num_classes": 10, "hidden": 4}
    assert model.input_shape == (1, 8, 8) and model.num_classes == 10
    again = build_model(model.arch, **model.arch_kwargs)
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_relative_file_path_is_made_absolute(model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    model = build_model("./my_models.py:fixed", input_shape=(1, 8, 8))
    assert model.arch == f"{model_file.resolve()}:fixed"


def test_factory_without_shape_parameters_gets_classes_from_a_dry_run(model_file):
    model = build_model(f"{model_file}:fixed", input_shape=(1, 8, 8), width=5)
    assert model.num_classes == 10 and model.arch_kwargs == {"input_shape": [1, 8, 8], "num_classes": 10, "width": 5}
    assert model.training  # the dry run leaves the mode as it was


def test_module_factory_found_from_the_working_folder(model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(model_file.parent))])
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = build_model("my_models:Net", input_shape=(1, 8, 8), num_classes=3)
    assert model.arch == "my_models:Net" and model.num_classes == 3
    assert str(model_file.parent) not in sys.path  # the working folder was added only for the import
    assert "input_shape" in model_defaults("my_models:Net") and model_defaults("my_models:Net")["hidden"] == 16
    sys.modules.pop("my_models", None)


def test_installed_module_factory():
    model = build_model("torch.nn:Linear", input_shape=(4,), num_classes=None, in_features=4, out_features=3)
    assert model.num_classes == 3 and model.arch == "torch.nn:Linear"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("{f}:Nett", {}, r"has no attribute 'Nett' \(did you mean 'Net'\?\)"),
        ("{d}/missing.py:Net", {}, r"file .*missing.py not found"),
        ("no_such_package.models:Net", {}, r"no module named 'no_such_package.models'"),
        ("{f}", {}, r"write a user model as package.module:Factory or path/to/file.py:Factory"),
        ("{f}:Net", {"input_shape": (1, 8, 8), "num_classes": 10, "width": 3}, r"has no option 'width'; accepted: hidden"),
        ("{f}:Net", {}, r"needs input_shape"),
        ("{f}:needs", {}, r"needs option 'depth' \(it has no default\)"),
        ("{f}:not_a_module", {}, r"returned an object of type int, not a torch.nn.Module"),
        ("{f}:CONSTANT", {}, r"CONSTANT is not a class or function \(it is of type int\)"),
        ("{f}:broken", {"input_shape": (1, 8, 8), "num_classes": 10}, r"building it failed: ValueError: hidden size must be even"),
        ("{f}:fixed", {"input_shape": (1, 20, 20)}, r"does not take inputs of shape \(1, 20, 20\).*mat1 and mat2"),
        ("{f}:fixed", {"input_shape": (1, 8, 8), "num_classes": 4}, r"gives 10 outputs per sample .* but the data has 4 classes"),
        ("{f}:pair", {"input_shape": (1, 8, 8), "num_classes": 4}, r"gives a value of type tuple per sample, not 4 logits"),
        ("{f}:Net", {"input_shape": (1, 8, 8), "num_classes": 10, "hidden": object()}, r"must be a plain JSON value"),
    ],
)
def test_bad_factories_fail_with_one_line(model_file, name, kwargs, message):
    with pytest.raises(NoraError, match=message) as info:
        build_model(name.format(f=model_file, d=model_file.parent), **kwargs)
    assert "\n" not in str(info.value)


def test_file_with_syntax_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(NoraError, match=r"loading .*bad.py failed: SyntaxError"):
        build_model(f"{bad}:f")


def test_edited_file_is_reloaded(tmp_path):
    path = tmp_path / "net.py"
    path.write_text("from torch import nn\ndef f(input_shape, num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, num_classes))\n")
    assert build_model(f"{path}:f", input_shape=(4,), num_classes=2).num_classes == 2
    path.write_text("from torch import nn\ndef f(input_shape, num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 7))\n")
    import os

    os.utime(path, ns=(1, 10**18))  # a different mtime even on coarse clocks
    with pytest.raises(NoraError, match="gives 7 outputs"):
        build_model(f"{path}:f", input_shape=(4,), num_classes=2)


def test_checkpoint_rebuilds_a_user_model(model_file, tmp_path):
    model = build_model(f"{model_file}:Net", input_shape=(1, 8, 8), num_classes=10, hidden=6)
    checkpoint.save_model(tmp_path / "run", model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    loaded, meta = checkpoint.load_model(tmp_path / "run")
    x = torch.rand(2, 1, 8, 8)
    assert meta["arch"].endswith("my_models.py:Net")
    assert torch.equal(loaded(x), model.eval()(x))
    model_file.unlink()
    with pytest.raises(NoraError, match="not found"):
        checkpoint.load_model(tmp_path / "run")


def test_trainer_trains_a_user_model(model_file, tmp_path):
    from nora.config import parse_config
    from nora.train import train

    config = parse_config({
        "name": "own", "output_dir": str(tmp_path),
        "data": {"dataset": "digits", "batch_size": 64, "test_batch_size": 512},
        "model": {"arch": f"{model_file}:Net", "kwargs": {"hidden": 32}},
        "train": {"epochs": 2, "lr": 0.01, "progress": False},
    })
    result = train(config)
    assert result.test_accuracy > 0.5
    loaded, meta = checkpoint.load_model(result.run_dir)
    assert meta["arch"] == f"{model_file.resolve()}:Net" and loaded.body[1].out_features == 32
