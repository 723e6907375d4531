"""QONNX / QCDQ / ONNX export: the files load and run in qonnx and onnxruntime and match PyTorch;
what a format cannot express, and broken files, give one clear error."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nora.cli import main
from nora.config import parse_config
from nora.errors import NoraError
from nora.export import (
    check_export,
    export_model,
    load_onnx,
    run_onnxruntime,
    run_qonnx,
)
from nora.models import build_model
from nora.noise import GaussianAdditive
from nora.sim import attach
from nora.train import train
from nora.train.checkpoint import save_model

#: FPGA-flow warnings of research-preset exports are tested in test_hls4ml.py.
pytestmark = pytest.mark.filterwarnings("ignore::nora.export.FlowWarning")

#: onnxruntime 1.31 reads IR versions up to 11 (onnx 1.23 writes 14, which it refuses).
MAX_READABLE_IR = 11


def sample(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def trained_like(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial statistics, as after training, then switch to eval."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, *model.input_shape))
    return model.eval()


@pytest.fixture(scope="module")
def lenet_qat():
    torch.manual_seed(0)
    return trained_like(build_model("lenet5-qat", input_shape=(1, 8, 8), batch_norm=True, bits=4, act_scale=0.1))


@pytest.mark.parametrize("fmt", ["qonnx", "qcdq"])
def test_quantised_export_runs_and_matches_pytorch(tmp_path, lenet_qat, fmt):
    path = tmp_path / f"lenet.{fmt}.onnx"
    summary = export_model(lenet_qat, path, fmt)
    proto = onnx.load(str(path))
    assert summary.format == fmt and path.stat().st_size == summary.size_bytes
    assert proto.ir_version <= MAX_READABLE_IR
    assert proto.ir_version == onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["nora.arch"] == "lenet5-qat" and json.loads(meta["nora.arch_kwargs"])["bits"] == 4
    if fmt == "qonnx":
        assert "Quant" in ops(path) and "QuantizeLinear" not in ops(path)
    else:
        assert {"QuantizeLinear", "DequantizeLinear", "Clip"} <= ops(path)  # Clip: 4 bits < 8
    x = sample(6, 1, 8, 8)
    report = check_export(path, lenet_qat, x)
    engines = [r.engine for r in report.results]
    assert engines == (["qonnx"] if fmt == "qonnx" else ["qonnx", "onnxruntime", "onnxruntime-opt"])
    assert report.passed
    exact = [r for r in report.results if r.required]
    assert all(r.max_abs_diff < 1e-4 and r.argmax_agreement == 1.0 for r in exact)
    assert [r.engine for r in report.results if not r.required] == ([] if fmt == "qonnx" else ["onnxruntime-opt"])


def test_float_model_to_onnx_runs_in_both_engines(tmp_path):
    torch.manual_seed(0)
    model = trained_like(build_model("mlp", input_shape=(1, 4, 4), hidden=(12,), batch_norm=True))
    path = tmp_path / "mlp.onnx"
    export_model(model, path, "onnx")
    assert not ops(path) & {"Quant", "QuantizeLinear"}
    x = sample(5, 1, 4, 4)
    with torch.no_grad():
        expected = model(x).numpy()
    proto = load_onnx(path)
    assert np.allclose(run_qonnx(proto, x.numpy()), expected, atol=1e-5)
    assert np.allclose(run_onnxruntime(proto, x.numpy()), expected, atol=1e-5)


def test_bipolar_weights_export_as_bipolarquant(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), weight_bits=1).eval()
    path = tmp_path / "bipolar.onnx"
    export_model(model, path, "qonnx")
    assert "BipolarQuant" in ops(path)
    assert check_export(path, model, sample(4, 1, 4, 4)).passed
    with pytest.raises(NoraError, match=r"layer 'layers.1' \(QuantLinear\) has bipolar \(1-bit\) weights.*qonnx"):
        export_model(model, tmp_path / "bipolar.qcdq.onnx", "qcdq")


def test_learned_scales_export(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), scaling="learned", act_scale=0.02).eval()
    for fmt in ("qonnx", "qcdq"):
        export_model(model, tmp_path / f"m.{fmt}.onnx", fmt)
        assert check_export(tmp_path / f"m.{fmt}.onnx", model, sample(4, 1, 4, 4)).passed


def test_sixteen_bits_only_in_qonnx(tmp_path):
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), bits=16).eval()
    with pytest.raises(NoraError, match=r"layer 'layers.1' \(QuantLinear\) has 16-bit weights; QCDQ expresses at most 8"):
        export_model(model, tmp_path / "m.onnx", "qcdq")
    export_model(model, tmp_path / "m.onnx", "qonnx")
    assert check_export(tmp_path / "m.onnx", model, sample(3, 1, 4, 4)).passed


def test_quantised_model_is_refused_as_float_onnx(tmp_path, lenet_qat):
    with pytest.raises(NoraError, match=r"layer 'features.0' \(QuantConv2d\) is quantised.*--format qonnx or qcdq"):
        export_model(lenet_qat, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()


class RunningMax(nn.Module):
    """A layer no ONNX exporter can write (cumulative maximum)."""

    def forward(self, x):
        return torch.cummax(x, dim=1).values


def test_inexpressible_layer_is_named(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), RunningMax()), nn.Linear(4, 2))
    model.input_shape = (4,)
    for fmt in ("onnx", "qonnx"):
        with pytest.raises(NoraError, match=rf"the {fmt} exporter cannot express layer '1.1' \(RunningMax\): .*cummax"):
            export_model(model, tmp_path / "m.onnx", fmt)


def test_bad_format_and_attached_noise_are_refused(tmp_path, lenet_qat):
    with pytest.raises(NoraError, match="unknown export format 'tflite'"):
        export_model(lenet_qat, tmp_path / "m.onnx", "tflite")
    with attach(lenet_qat, GaussianAdditive(0.1), example_input=torch.zeros(2, 1, 8, 8)), \
            pytest.raises(NoraError, match="noise injector attached"):
        export_model(lenet_qat, tmp_path / "m.onnx", "qonnx")


@pytest.mark.parametrize("name, kwargs", [
    ("kws-mlp-w3a3", {"num_classes": 10}),
    ("resnet8-qat", {"input_shape": (3, 8, 8), "num_classes": 4}),
    ("autoencoder-qat", {"hidden": 16, "bottleneck": 4, "input_shape": (40,)}),
])
def test_mlperf_reference_models_export_to_qonnx(tmp_path, name, kwargs):
    torch.manual_seed(0)
    model = trained_like(build_model(name, **kwargs))
    path = tmp_path / f"{name}.onnx"
    export_model(model, path, "qonnx")
    assert "Quant" in ops(path)
    report = check_export(path, model, sample(3, *model.input_shape))
    assert report.passed, report.to_dict()


def test_a_different_model_does_not_pass(tmp_path, lenet_qat):
    path = tmp_path / "m.onnx"
    export_model(lenet_qat, path, "qcdq")
    torch.manual_seed(1)
    other = trained_like(build_model("lenet5-qat", input_shape=(1, 8, 8), batch_norm=True, bits=4, act_scale=0.1))
    report = check_export(path, other, sample(4, 1, 8, 8))
    assert not report.passed
    assert all(r.within < r.min_match and r.max_abs_diff > r.tolerance for r in report.results)


def test_tolerance_defaults_depend_on_the_graph(tmp_path, lenet_qat):
    x = sample(4, 1, 8, 8)
    export_model(lenet_qat, tmp_path / "q.onnx", "qonnx")
    with torch.no_grad():
        scale = float(lenet_qat(x).abs().max())
    quantised = check_export(tmp_path / "q.onnx", lenet_qat, x).results[0]
    assert quantised.tolerance == pytest.approx(1e-4 + 1e-2 * scale) and quantised.min_match == 0.9
    model = trained_like(build_model("lenet5", input_shape=(1, 8, 8)))
    export_model(model, tmp_path / "f.onnx", "onnx")
    with torch.no_grad():
        scale = float(model(x).abs().max())
    strict = check_export(tmp_path / "f.onnx", model, x).results[0]
    assert strict.tolerance == pytest.approx(1e-4 + 1e-4 * scale) and strict.min_match == 1.0
    custom = check_export(tmp_path / "f.onnx", model, x, atol=0.0, rtol=0.5, min_match=0.5).results[0]
    assert custom.tolerance == pytest.approx(0.5 * scale) and custom.min_match == 0.5
    for bad, message in (({"min_match": 0}, "min_match must be in"), ({"rtol": -1.0}, "rtol must be a finite"),
                         ({"atol": float("nan")}, "atol must be a finite")):
        with pytest.raises(NoraError, match=message):
            check_export(tmp_path / "f.onnx", model, x, **bad)


def test_input_shape_mismatch(tmp_path, lenet_qat):
    path = tmp_path / "m.onnx"
    export_model(lenet_qat, path, "qonnx")
    with pytest.raises(NoraError, match=r"takes inputs of shape \(1, 8, 8\), but the samples have shape \(1, 9, 9\)"):
        check_export(path, None, torch.zeros(2, 1, 9, 9))


@pytest.mark.parametrize("content, message", [
    (b"this is not a protobuf \xff\xfe", "not a valid ONNX file"),
    (None, "no ONNX file at"),
    (b"", "holds no complete ONNX graph"),
])
def test_broken_files_are_refused(tmp_path, content, message):
    path = tmp_path / "broken.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(NoraError, match=message):
        check_export(path)


def test_truncated_file_is_refused(tmp_path, lenet_qat):
    path = tmp_path / "m.onnx"
    export_model(lenet_qat, path, "qonnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(NoraError, match=r"m.onnx is not a valid ONNX file \(corrupt or truncated\)"):
        check_export(path)


def test_cli_export_and_check(tmp_path, capsys):
    config = parse_config({
        "name": "qat", "output_dir": str(tmp_path), "seed": 0,
        "data": {"dataset": "digits", "batch_size": 64, "train_subset": 128, "test_subset": 32},
        "model": {"arch": "lenet5-qat", "kwargs": {"bits": 4, "act_scale": 0.2}},
        "train": {"epochs": 1, "progress": False},
    }, "test")
    run = train(config).run_dir
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(run), "--format", "qcdq", "-o", str(out)]) == 0
    assert "QuantizeLinear" in capsys.readouterr().out
    assert main(["check", str(out), "--against", str(run), "--samples", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["samples"] == 8
    assert [r["engine"] for r in report["results"]] == ["qonnx", "onnxruntime", "onnxruntime-opt"]
    assert [r["required"] for r in report["results"]] == [True, True, False]
    assert main(["check", str(out)]) == 0  # no reference: the two engines against each other
    assert "finite" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert main(["check", str(bad)]) == 2
    assert "error: " in capsys.readouterr().err
    model = build_model("lenet5-qat", input_shape=(1, 8, 8)).eval()
    save_model(tmp_path / "run", model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--format", "onnx", "-o", str(bad)]) == 2
    assert "is quantised" in capsys.readouterr().err
    assert main(["check", str(bad), "--samples", "0"]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    export_model(model, tmp_path / "m.onnx", "qonnx")
    assert main(["check", str(tmp_path / "m.onnx"), "--against", str(tmp_path / "run")]) == 2
    assert "records no training config" in capsys.readouterr().err
    torch.manual_seed(9)
    other = build_model("lenet5-qat", input_shape=(1, 8, 8)).eval()
    save_model(tmp_path / "other", other, {"arch": other.arch, "arch_kwargs": other.arch_kwargs})
    assert main(["check", str(tmp_path / "m.onnx"), "--against", str(tmp_path / "other"), "--random-inputs",
                 "--samples", "4"]) == 2
    assert "does not match" in capsys.readouterr().err


def test_missing_export_packages_say_which_extra(tmp_path, monkeypatch):
    import sys

    model = build_model("lenet5", input_shape=(1, 8, 8)).eval()
    export_model(model, tmp_path / "m.onnx", "onnx")
    monkeypatch.setitem(sys.modules, "brevitas.export", None)  # what an absent package looks like to import
    with pytest.raises(NoraError, match=r"--format qonnx: the 'brevitas' package is not installed.*install nora\[export\]"):
        export_model(model, tmp_path / "q.onnx", "qonnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(NoraError, match=r"'onnxruntime' package is not installed.*install nora\[export\]"):
        run_onnxruntime(load_onnx(tmp_path / "m.onnx"), np.zeros((1, 1, 8, 8), dtype=np.float32))


def test_bias_quantisers_have_rank1_scales_for_finn(tmp_path):
    """FINN's QONNX import runs qonnx's ExtractBiasFromConv, which fails on a 0-d bias scale
    (a per-tensor scale it tries to reshape to the bias's shape); the export writes shape (1,)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.extract_conv_bias import ExtractBiasFromConv

    model = build_model("lenet5-qat", bits=8, act_scale=1 / 16, preset="fpga", input_bits=8, input_max=4.0).eval()
    path = tmp_path / "fpga.onnx"
    export_model(model, path, "qonnx")
    wrapper = ModelWrapper(str(path))
    biases = [n.input[2] for n in wrapper.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert len(biases) == 2
    for bias in biases:
        quant = wrapper.find_producer(bias)
        assert quant.op_type == "Quant" and wrapper.get_initializer(quant.input[1]).shape == (1,)
    extracted = wrapper.transform(ExtractBiasFromConv())
    assert not [n for n in extracted.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.as_tensor(x)).numpy()
    assert np.abs(run_qonnx(load_onnx(path), x) - expected).max() < 1e-5
