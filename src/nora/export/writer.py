"""``export_model``: a trained nora model to an ONNX file that other tools can read.

Before any export, fold-aware conv + BatchNorm pairs (fpga preset) become the plain quantised convs
they equal; before a QONNX export, a global average pool in front of the classifier is folded into
it (``nora.export.fold``: hls4ml cannot take the pool). After the exporter: QONNX files go through the
``qonnx`` cleanup (what FINN and hls4ml run first), constructs an FPGA flow cannot map are reported
as ``FlowWarning`` (``nora.export.flows``), the IR
version is set to the smallest one the opsets need, so that older runtimes read the file too (an
exporter may stamp a newer one than needed: onnx 1.23 stamps IR 14, which even onnxruntime 1.31
cannot read), and the nora architecture is stored in the file's metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from nora.errors import NoraError
from nora.export import formats
from nora.export.blame import failing_layer
from nora.export.flows import Problem, flow_problems, name_layers, warn_problems
from nora.export.fold import fold_batch_norms, fold_global_pools, layer_calls
from nora.io import atomic_write_bytes
from nora.quant.backend import require
from nora.quant.config import PRESET_FLOWS
from nora.sim.injector import injector_of


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    path: Path
    format: str
    ir_version: int
    opset: int
    operators: dict[str, int]
    size_bytes: int
    preset: str | None = None  # the quantisation preset of the model (None: float)
    folded: tuple[str, ...] = ()  # global pools folded into the classifier
    problems: tuple[Problem, ...] = ()  # what hls4ml cannot map (QONNX files only)

    def describe(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.operators.items()))
        return (f"{self.path} ({self.format}, {self.size_bytes / 1024:.1f} KiB, IR {self.ir_version}, "
                f"opset {self.opset}): {ops}")

    def suits(self) -> str:
        """Which flows the file suits, from the preset and the problems found."""
        if self.format != "qonnx":
            return "onnxruntime, qonnx (FPGA flows read --format qonnx)"
        if any(p.fatal for p in self.problems):
            return "qonnx; hls4ml cannot map it (see the warnings)"
        if self.problems:
            return "qonnx; hls4ml approximately (see the warnings)"
        if self.preset is None:
            return "qonnx, onnxruntime; hls4ml in fixed point (a float model: approximate)"
        return PRESET_FLOWS[self.preset]


def _refuse_attached_noise(model: nn.Module) -> None:
    if injector_of(model) is not None:
        raise NoraError("the model has a noise injector attached; detach it before exporting (noise is not part of the network)")
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise NoraError(f"layer '{name}' carries weight noise (a parametrization); detach it before exporting")


def _finish(proto, fmt: str, model: nn.Module):
    onnx = require("onnx", f"--format {fmt}")
    if fmt == "qonnx":
        wrapper = require("qonnx.core.modelwrapper", "--format qonnx").ModelWrapper
        cleanup = require("qonnx.util.cleanup", "--format qonnx").cleanup_model
        proto = _rank1_bias_scales(cleanup(wrapper(proto)).model)
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    metadata = {
        "nora.format": fmt,
        "nora.arch": str(getattr(model, "arch", type(model).__name__)),
        "nora.arch_kwargs": json.dumps(getattr(model, "arch_kwargs", {})),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    if fmt != "qonnx":  # the checker knows no custom domains; QONNX files are checked by executing them
        onnx.checker.check_model(proto)
    return proto


def _rank1_bias_scales(proto):
    """Give the scalar scale and zero point of every bias quantiser shape (1,): the same per-tensor
    values, but qonnx's ExtractBiasFromConv (run by FINN's QONNX import) reshapes any other shape to
    the bias's and fails on a 0-d one."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 3:
            continue
        quant = producers.get(node.input[2])
        if quant is None or quant.op_type != "Quant":
            continue
        for name in quant.input[1:3]:
            tensor = initializers.get(name)
            if tensor is not None and len(tensor.dims) == 0:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(1), name))
                stale = [v for v in proto.graph.value_info if v.name == name]  # the recorded 0-d shape
                for info in stale:
                    proto.graph.value_info.remove(info)
    return proto


def _named(problems: list[Problem], proto, module: nn.Module, example: torch.Tensor) -> list[Problem]:
    """The problems with the model's layer names (call order of the exported, folded module)."""
    if not problems:
        return problems
    from nora.quant.layers import ACTIVATION_TYPES

    calls = layer_calls(module, example)
    weights = [(name, type(m).__name__) for name, m, _, _ in calls if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    activations = [(name, type(m).__name__) for name, m, _, _ in calls if isinstance(m, ACTIVATION_TYPES)]
    return name_layers(problems, proto, weights, activations)


def export_model(model: nn.Module, path: str | Path, fmt: str = "qonnx", example_input: torch.Tensor | None = None) -> ExportSummary:
    """Write ``model`` (eval mode, batch 1) to ``path`` in ``fmt``; the model itself is not changed."""
    formats.check_format(fmt)
    _refuse_attached_noise(model)
    formats.refuse_inexpressible(model, fmt)
    onnx = require("onnx", f"--format {fmt}")
    if example_input is None:
        shape = getattr(model, "input_shape", None)
        if shape is None:
            raise NoraError("the model has no input_shape; pass an example input")
        example_input = torch.zeros(1, *shape)
    example_input = example_input[:1]
    export = formats.exporter(fmt)
    module = fold_batch_norms(copy.deepcopy(model).eval())
    folded: list[str] = []
    if fmt == "qonnx":
        module, folded = fold_global_pools(module, example_input)
    try:
        with formats.quiet():
            data = export(module, example_input)
    except Exception as exc:  # noqa: BLE001  exporters fail with many types; the layer is found next
        with formats.quiet():
            name, kind = failing_layer(model, example_input, export)
        where = f"layer '{name}' ({kind})" if name else f"the forward code of {kind}"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NoraError(f"the {fmt} exporter cannot express {where}: {reason}") from None
    proto = _finish(onnx.load_from_string(data), fmt, model)
    problems: tuple[Problem, ...] = ()
    if fmt == "qonnx":
        problems = tuple(_named(flow_problems(proto), proto, module, example_input))
        warn_problems(list(problems))
    written = atomic_write_bytes(path, proto.SerializeToString())
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ExportSummary(written, fmt, proto.ir_version, opset, dict(Counter(n.op_type for n in proto.graph.node)),
                         written.stat().st_size, getattr(model, "quant_preset", None), tuple(folded), problems)
