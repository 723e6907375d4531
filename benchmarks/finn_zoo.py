"""What FINN (finn-plus) accepts of nora's QONNX exports: its streamlining and hardware-layer conversion.

finn-plus pins onnx, onnxruntime, protobuf and brevitas at versions nora's own environment does not
use, so it lives in a separate virtual environment and the two halves of this script run apart:

    .venv/bin/python benchmarks/finn_zoo.py export --out runs/finn      # nora: one QONNX file per zoo model
    /work/finn-venv/bin/python benchmarks/finn_zoo.py check runs/finn \
        --report benchmarks/results/issue11/finn_zoo          # FINN: steps, HW layers, agreement

``check`` runs FINN's own build steps on each file, in order: QONNX -> FINN-ONNX, tidy-up,
streamlining, conversion to hardware layers. It records the first step
that fails (with FINN's message), how many nodes became hardware layers and which op types stay
in software, and the largest difference between the FINN-ONNX model after streamlining and the
QONNX file, executed by FINN's / qonnx's Python executor on 8 random inputs.
Install: ``python3 -m venv /work/finn-venv && /work/finn-venv/bin/pip install torch==2.13.0`` and
then finn-plus 1.6.1 with ``--no-deps`` plus its requirements (brevitas 0.13.0 wants
setuptools<70 where torch 2.13 wants >=77; the resolver refuses, but neither needs the other's
setuptools at run time).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from pathlib import Path

import numpy as np

#: name -> (builder, kwargs). Untrained: what FINN accepts depends on the graph, not on the weights.
ZOO = {
    "lenet5-8": ("lenet5-qat", {"bits": 8, "act_scale": 1 / 16}),
    "lenet5-4": ("lenet5-qat", {"bits": 4, "act_scale": 1 / 8}),
    "lenet5-8-learned": ("lenet5-qat", {"bits": 8, "act_scale": 1 / 16, "scaling": "learned"}),
    "lenet5-bipolar": ("lenet5-qat", {"bits": 4, "weight_bits": 1, "act_scale": 0.25, "batch_norm": True}),
    "mlp": ("mlp-qat", {}),
    "kws-w3a3": ("kws-mlp-w3a3", {}),
    "resnet8": ("resnet8-qat", {}),
    "autoencoder": ("autoencoder-qat", {}),
}


def export(out: Path) -> None:
    """Every zoo model in both presets as QONNX (run with nora's environment)."""
    import torch

    from nora.export import export_model
    from nora.models import build_model

    out.mkdir(parents=True, exist_ok=True)
    for name, (arch, kwargs) in ZOO.items():
        for preset in ("research", "fpga"):
            options = {**kwargs, "preset": preset}
            if preset == "fpga" and arch in ("lenet5-qat", "mlp-qat"):
                options |= {"input_bits": 8, "input_max": 4.0}
            torch.manual_seed(0)
            model = build_model(arch, **options)
            model.train()
            with torch.no_grad():  # settle BatchNorm statistics and learned scales on one batch
                model(torch.rand(64, *model.input_shape, generator=torch.Generator().manual_seed(0)))
            model.eval()
            path = out / f"{name}-{preset}.onnx"
            export_model(model, path, "qonnx")
            (out / f"{name}-{preset}.json").write_text(json.dumps({"input_shape": list(model.input_shape)}))
            print(f"exported {path}")


def _steps():
    """FINN's front-end steps as its builder orders them (the builder module itself needs Vivado's
    simulator at import, so the transformations are applied here one by one)."""
    from finn.util.settings import initialize_dummy_settings

    initialize_dummy_settings()  # FINN's passes read global settings its own CLI would set up
    import finn.transformation.fpgadataflow.convert_to_hw as hw
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
    from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveReadableTensorNames,
        GiveUniqueNodeNames,
        RemoveStaticGraphInputs,
        RemoveUnusedTensors,
    )
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model

    from finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation import (
        InferBinaryMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import InferDuplicateStreamsLayer
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
        InferElementwiseBinaryOperation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
    from finn.transformation.fpgadataflow.convert_to_hw.label_select import InferLabelSelectLayer
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation import InferVectorVectorActivation

    del hw

    def apply(model, transforms):
        for transform in transforms:
            model = model.transform(transform)
        return model

    def to_finn(model):
        return cleanup_model(model).transform(ConvertQONNXtoFINN())

    def tidy(model):
        return apply(model, [InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(),
                             InferDataTypes(), RemoveStaticGraphInputs()])

    def streamline(model):
        model = apply(model, [absorb.AbsorbScalarBiasIntoMultiThreshold(), Streamline()])
        if model.get_nodes_by_op_type("Conv"):
            model = apply(model, [LowerConvsToMatMul(), MakeMaxPoolNHWC(), absorb.AbsorbTransposeIntoMultiThreshold(),
                                  MakeMaxPoolNHWC(), absorb.AbsorbConsecutiveTransposes()])
        return apply(model, [ConvertBipolarMatMulToXnorPopcount(), Streamline(), absorb.AbsorbScalarMulAddIntoTopK(),
                             InferDataLayouts(), RemoveUnusedTensors()])

    def convert_to_hw(model):
        return apply(model, [InferBinaryMatrixVectorActivation(), InferQuantizedMatrixVectorActivation(),
                             InferVectorVectorActivation(), InferLabelSelectLayer(), InferThresholdingLayer(),
                             InferPool(), InferConvInpGen(), RemoveCNVtoFCFlatten(), InferGlobalAccPoolLayer(),
                             InferElementwiseBinaryOperation(), InferDuplicateStreamsLayer(),
                             absorb.AbsorbConsecutiveTransposes(), GiveUniqueNodeNames(), InferDataLayouts(),
                             InferDataTypes(), InferShapes()])

    return [("qonnx_to_finn", to_finn), ("tidy_up", tidy), ("streamline", streamline),
            ("convert_to_hw", convert_to_hw)]


def _run(model, inputs: np.ndarray) -> np.ndarray:
    from qonnx.core.onnx_exec import execute_onnx

    name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
    return np.stack([execute_onnx(model, {name_in: x[None]})[name_out][0] for x in inputs])


def check_file(path: Path) -> dict:
    from qonnx.core.modelwrapper import ModelWrapper

    shape = json.loads(path.with_suffix(".json").read_text())["input_shape"]
    inputs = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
    model = ModelWrapper(str(path))
    reference = _run(model, inputs)
    row = {"file": path.name, "steps_passed": [], "failed_step": None, "error": None}
    for name, step in _steps():
        started = time.perf_counter()
        try:
            model = step(model)
        except Exception as exc:  # noqa: BLE001  FINN raises many types; the row records it
            row["failed_step"], row["error"] = name, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            row["trace_tail"] = traceback.format_exc().strip().splitlines()[-3:]
            break
        row["steps_passed"].append({"step": name, "seconds": round(time.perf_counter() - started, 3)})
        if name == "streamline":
            try:
                row["max_diff_streamlined_vs_qonnx"] = float(np.abs(_run(model, inputs) - reference).max())
            except Exception as exc:  # noqa: BLE001
                row["max_diff_streamlined_vs_qonnx"] = f"not executable: {type(exc).__name__}: {exc}"[:200]
        if name == "convert_to_hw":
            hw = [n for n in model.graph.node if "fpgadataflow" in n.domain]
            row["hw_layers"] = sorted({n.op_type for n in hw})
            row["hw_nodes"], row["nodes"] = len(hw), len(model.graph.node)
            row["software_op_types"] = sorted({n.op_type for n in model.graph.node if "fpgadataflow" not in n.domain})
            row["interior_software"] = _interior_software(model)
    # Software nodes at the edges (a layout transpose of the input) run on the host beside FINN's
    # dataflow partition; one between two hardware layers would split the accelerator.
    row["accepted"] = row["failed_step"] is None and not row.get("interior_software")
    return row


def _interior_software(model) -> list[str]:
    """Non-hardware nodes with a hardware layer both before and after them."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches(node, step) -> bool:
        seen, todo = set(), list(step(node))
        while todo:
            other = todo.pop()
            if id(other) in seen:
                continue
            seen.add(id(other))
            if "fpgadataflow" in other.domain:
                return True
            todo.extend(step(other))
        return False

    def before(n):
        return [producer[i] for i in n.input if i in producer]

    def after(n):
        return [c for o in n.output for c in consumers.get(o, [])]

    return [f"{n.op_type} {n.name}" for n in nodes
            if "fpgadataflow" not in n.domain and reaches(n, before) and reaches(n, after)]


def check(folder: Path, report: Path) -> None:
    import finn  # noqa: F401  fail early outside the FINN environment

    rows = []
    for path in sorted(folder.glob("*.onnx")):
        print(f"checking {path.name} ...", flush=True)
        rows.append(check_file(path))
        print(json.dumps(rows[-1]), flush=True)
    from importlib.metadata import version

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "finn_plus": version("finn-plus"),
              "qonnx": version("qonnx"), "load_average": os.getloadavg(), "rows": rows}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# FINN (finn-plus {result['finn_plus']}) on nora's QONNX exports", "",
             "| file | accepted | steps passed | first failing step: FINN's message | HW layers | "
             "left in software (between HW layers) | max diff streamlined vs QONNX |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        passed = ", ".join(s["step"] for s in r["steps_passed"]) or "-"
        failed = f"{r['failed_step']}: {r['error']}" if r["failed_step"] else "-"
        diff = r.get("max_diff_streamlined_vs_qonnx", "-")
        diff = f"{diff:.2g}" if isinstance(diff, float) else diff
        inside = r.get("interior_software", [])
        software = ", ".join(r.get("software_op_types", [])) or "-"
        software += f" ({', '.join(inside)})" if inside else (" (edges only)" if software != "-" else "")
        lines.append(f"| {r['file']} | {'yes' if r['accepted'] else 'no'} | {passed} | {failed} | "
                     f"{', '.join(r.get('hw_layers', [])) or '-'} | {software} | {diff} |")
    report.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("export")
    p.add_argument("--out", type=Path, default=Path("runs/finn"))
    p = sub.add_parser("check")
    p.add_argument("folder", type=Path)
    p.add_argument("--report", type=Path, default=Path("benchmarks/results/issue11/finn_zoo"))
    args = parser.parse_args()
    export(args.out) if args.action == "export" else check(args.folder, args.report)


if __name__ == "__main__":
    main()
