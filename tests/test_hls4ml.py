"""FPGA flows: export-time warnings for what hls4ml cannot map, the global-pool fold, and hls4ml's
C++ emulation (hls4ml + g++, the ``fpga`` extra) agreeing with qonnx: bit-exact for the fpga preset.

The graph checks need no hls4ml; the emulation tests skip cleanly without it. Each emulation
compiles a small model (5-15 s of g++); only the CLI one is in the fast set, the zoo is marked slow."""

from __future__ import annotations

import copy
import shutil
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nora.cli import main
from nora.errors import NoraError
from nora.export import FlowWarning, check_export, export_model, flow_problems, load_onnx, run_qonnx
from nora.models import build_model
from nora.train.checkpoint import save_model


def trained_like(model: nn.Module) -> nn.Module:
    """BatchNorm statistics away from their initial values, as after training; then eval."""
    generator = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, *model.input_shape, generator=generator))
    return model.eval()


def export(tmp_path, arch, **kwargs):
    torch.manual_seed(0)
    model = trained_like(build_model(arch, **kwargs))
    path = tmp_path / f"{arch}.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export_model(model, path, "qonnx")
    return model, path, summary, [str(w.message) for w in caught if issubclass(w.category, FlowWarning)]


def inputs(model, n=8):
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(1))


# ---- graph checks and warnings (no hls4ml needed) ----

def test_fpga_preset_exports_without_warnings(tmp_path):
    for arch, kwargs in (("lenet5-qat", {"input_shape": (1, 8, 8), "batch_norm": True, "input_bits": 8}),
                         ("resnet8-qat", {"input_shape": (3, 8, 8)})):
        _, path, summary, caught = export(tmp_path, arch, preset="fpga", **kwargs)
        assert caught == [] and summary.problems == ()
        assert "hls4ml" in summary.suits()


def test_float_input_is_reported_as_approximate(tmp_path):
    _, _, summary, caught = export(tmp_path, "lenet5-qat", input_shape=(1, 8, 8), preset="fpga")
    assert [(p.node, p.fatal) for p in summary.problems] == [("Conv_0", False)]
    assert caught == ["hls4ml maps 1 node(s) only approximately, first layer 'features.0' (QuantConv2d; ONNX node "
                      "'Conv_0', Conv): the graph input is not quantised, so the first layer computes on float inputs "
                      "(give the model input_bits)"]


def test_per_channel_float_scale_on_biased_conv_is_named(tmp_path):
    _, path, summary, caught = export(tmp_path, "lenet5-qat", input_shape=(1, 8, 8))
    fatal = [p for p in summary.problems if p.fatal]
    assert [p.node for p in fatal] == ["Quant_0", "Quant_1"]  # the two conv weight quantisers
    assert [p.layer for p in fatal] == [("features.0", "QuantConv2d"), ("features.3", "QuantConv2d")]
    assert any("cannot map layer 'features.0' (QuantConv2d; ONNX node 'Quant_0', Quant): per-channel float weight "
               "scale on a layer with a bias" in w for w in caught)
    assert any("only approximately" in w for w in caught) and "cannot map" in summary.suits()


def test_non_power_of_two_fan_out_is_named(tmp_path):
    _, _, summary, caught = export(tmp_path, "resnet8-qat", input_shape=(3, 8, 8))
    fan_outs = [p for p in summary.problems if p.fatal and "consumers" in p.reason]
    assert len(fan_outs) == 3  # the tensor entering each residual block feeds the conv and the skip
    assert [p.layer[0] for p in fan_outs] == ["relu", "layers.0.0.relu", "layers.1.0.relu"]
    assert any("layer 'relu' (QuantReLU; ONNX node" in w and "2 consumers (a fan-out" in w for w in caught)


def test_global_pool_is_folded_into_the_classifier(tmp_path):
    model, path, summary, _ = export(tmp_path, "resnet8-qat", input_shape=(3, 8, 8), preset="fpga")
    assert summary.folded == ("avgpool",)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GlobalAveragePool" not in ops and "AveragePool" not in ops
    x = inputs(model)
    with torch.no_grad():
        assert np.abs(run_qonnx(load_onnx(path), x.numpy()) - model(x).numpy()).max() < 1e-5


def test_fpga_resnet8_has_no_float_layer_between_quantisers(tmp_path):
    """The BatchNorms are folded into the convs at export: every Conv reads quantised weights and
    bias, and every residual Add adds two integer tensors (a float BatchNorm before the Add was
    computed in float32 by qonnx and in fixed point by hls4ml, and flipped a rounding after training).
    The research preset keeps its BatchNorms."""
    model, path, _, _ = export(tmp_path, "resnet8-qat", input_shape=(3, 8, 8), preset="fpga")
    graph = onnx.load(str(path)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    assert "BatchNormalization" not in producer.values()
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 9 and all(producer.get(i) == "Quant" for n in convs for i in n.input)
    adds = [n for n in graph.node if n.op_type == "Add"]
    assert len(adds) == 3 and all(producer[i] in ("Conv", "Quant") for n in adds for i in n.input)
    x = 2 * inputs(model)
    with torch.no_grad():
        assert np.abs(run_qonnx(load_onnx(path), x.numpy()) - model(x).numpy()).max() < 1e-5
    _, research, _, _ = export(tmp_path, "resnet8-qat", input_shape=(3, 8, 8))
    assert [n.op_type for n in onnx.load(str(research)).graph.node].count("BatchNormalization") == 9


def test_export_writes_the_folded_convs_the_model_computes():
    from nora.export.fold import fold_batch_norms

    torch.manual_seed(0)
    model = trained_like(build_model("resnet8-qat", input_shape=(3, 8, 8), preset="fpga"))
    plain = fold_batch_norms(copy.deepcopy(model))
    assert {type(m).__name__ for m in plain.modules()} & {"FoldedQuantConv2d", "FoldedBatchNorm2d", "BatchNorm2d"} == set()
    x = 2 * inputs(model)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))


class PoolOut(nn.Module):
    """A global pool whose flattened output is the result: nothing to fold it into."""

    def __init__(self):
        super().__init__()
        self.input_shape = (2, 4, 4)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.pool(self.conv(x)))


def test_global_pool_before_flatten_warns(tmp_path):
    with pytest.warns(FlowWarning, match=r"cannot map node '.*' \(GlobalAveragePool\): a global average pool before a flatten"):
        export_model(PoolOut().eval(), tmp_path / "pool.onnx", "qonnx")


def custom_op_file(tmp_path):
    helper = onnx.helper
    node = helper.make_node("Mystery", ["input"], ["output"], name="mystery_0", domain="acme.ops")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("acme.ops", 1)]),
              str(path))
    return path


def test_custom_op_is_named_for_the_flow(tmp_path, capsys):
    path = custom_op_file(tmp_path)
    problems = flow_problems(load_onnx(path))
    assert [(p.node, p.fatal) for p in problems] == [("mystery_0", True)]
    assert main(["check", str(path), "--flow", "hls4ml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "hls4ml cannot map node 'mystery_0' (acme.ops.Mystery): an operator of a domain no flow knows" in err


def test_qcdq_files_are_refused_for_the_flow(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), preset="fpga").eval()
    export_model(model, tmp_path / "m.onnx", "qcdq")
    with pytest.raises(NoraError, match="reads QONNX .* not QCDQ; export with --format qonnx"):
        check_export(tmp_path / "m.onnx", model, flows=("hls4ml",))


def test_missing_hls4ml_says_what_to_install(tmp_path, monkeypatch):
    _, path, _, _ = export(tmp_path, "mlp-qat", input_shape=(1, 4, 4), hidden=(8,), preset="fpga")
    monkeypatch.setitem(sys.modules, "hls4ml", None)  # what an absent package looks like to import
    with pytest.raises(NoraError, match=r"needs the 'hls4ml' package: pip install 'nora\[fpga\]'"):
        check_export(path, flows=("hls4ml",))


# ---- hls4ml's C++ emulation ----

def emulate(path, model, x):
    from nora.export import run_hls4ml

    result = run_hls4ml(load_onnx(path), x.numpy())
    reference = run_qonnx(load_onnx(path), x.numpy())
    with torch.no_grad():
        torch_out = model(x).numpy()
    return result.outputs, reference, torch_out


def test_missing_compiler_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("hls4ml")
    _, path, _, _ = export(tmp_path, "mlp-qat", input_shape=(1, 4, 4), hidden=(8,), preset="fpga")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NoraError, match="compiles the emulation with g\\+\\+, which is not on PATH"):
        check_export(path, flows=("hls4ml",))


@pytest.mark.slow
def test_fpga_preset_is_bit_exact_in_hls4ml(tmp_path):
    """Integer arithmetic end to end (4-bit LeNet-5, power-of-two scales, no float layer between
    quantisers): hls4ml's fixed point gives exactly qonnx's float outputs."""
    pytest.importorskip("hls4ml")
    model, path, _, _ = export(tmp_path, "lenet5-qat", input_shape=(1, 8, 8), bits=4, act_scale=0.125, input_bits=8,
                               preset="fpga")
    x = 2 * inputs(model)  # wide inputs: the input quantiser and the ReLUs saturate too
    hls, qonnx_out, torch_out = emulate(path, model, x)
    assert np.array_equal(hls, qonnx_out)
    assert np.abs(qonnx_out - torch_out).max() < 1e-4


@pytest.mark.slow
def test_fpga_preset_with_batch_norm_and_bipolar_weights_in_hls4ml(tmp_path):
    """A float BatchNorm between quantisers: hls4ml computes it in wide fixed point, qonnx in float32,
    so the two agree to float rounding (measured up to 2e-6), not bit for bit."""
    pytest.importorskip("hls4ml")
    model, path, _, _ = export(tmp_path, "lenet5-qat", input_shape=(1, 8, 8), weight_bits=1, bits=4, act_scale=0.25,
                               batch_norm=True, input_bits=8, preset="fpga")
    hls, qonnx_out, _ = emulate(path, model, 2 * inputs(model))
    assert np.abs(hls - qonnx_out).max() < 1e-4
    assert (hls.argmax(1) == qonnx_out.argmax(1)).all()


@pytest.mark.slow
def test_trained_fpga_resnet8_is_bit_exact_in_hls4ml(tmp_path):
    """Residual blocks with folded BatchNorms after a few training steps: integer arithmetic end to end."""
    pytest.importorskip("hls4ml")
    torch.manual_seed(0)
    model = build_model("resnet8-qat", input_shape=(3, 8, 8), preset="fpga")
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        x = torch.randn(32, 3, 8, 8, generator=generator)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,), generator=generator))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    path = tmp_path / "resnet8.onnx"
    export_model(model, path, "qonnx")
    hls, qonnx_out, torch_out = emulate(path, model, 2 * inputs(model, 32))
    assert np.array_equal(hls, qonnx_out)
    assert np.abs(qonnx_out - torch_out).max() < 1e-5


@pytest.mark.slow
def test_research_preset_within_tolerance_in_hls4ml(tmp_path):
    pytest.importorskip("hls4ml")
    model, path, _, caught = export(tmp_path, "mlp-qat", input_shape=(1, 8, 8), hidden=(16, 16))
    assert any("only approximately" in w for w in caught)
    hls, qonnx_out, _ = emulate(path, model, inputs(model, 16))
    assert np.abs(hls - qonnx_out).max() < 1e-3
    assert (hls.argmax(1) == qonnx_out.argmax(1)).all()


def test_cli_check_with_the_hls4ml_flow(tmp_path, capsys):
    pytest.importorskip("hls4ml")
    torch.manual_seed(0)
    model = build_model("mlp-qat", input_shape=(1, 4, 4), hidden=(8,), input_bits=8, preset="fpga").eval()
    save_model(tmp_path / "run", model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "suits: PyTorch, qonnx, onnxruntime, hls4ml" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "m.onnx"), "--against", str(tmp_path / "run"), "--random-inputs",
                 "--samples", "8", "--flow", "hls4ml", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    hls = next(r for r in report["results"] if r["engine"] == "hls4ml")
    qonnx = next(r for r in report["results"] if r["engine"] == "qonnx")
    assert hls["passed"] and hls["reference"] == "pytorch" and hls["max_abs_diff"] == qonnx["max_abs_diff"] < 1e-5
