"""Load an ONNX file defensively and execute it in the ``qonnx`` package and in onnxruntime.

``qonnx`` is the reference for QONNX files: it reads them with ``ModelWrapper``, runs its shape
inference and cleanup, and executes Quant/BipolarQuant/Trunc with its own operator definitions (the
standard nodes through onnxruntime). onnxruntime runs standard ONNX (QCDQ and float files) directly,
with graph optimisations off, and once more with its default optimisations ("onnxruntime-opt", for
information); it has no QONNX operators. Both take one sample per call because the exported graphs have batch 1.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from nora.errors import NoraError
from nora.quant.backend import require

QONNX_OPS = {"Quant", "BipolarQuant", "Trunc"}
QCDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
ENGINES = ("qonnx", "onnxruntime", "onnxruntime-opt")
#: Engines reported for information, never failing a check: onnxruntime with its default graph
#: optimisations (how it deploys) fuses QDQ pairs and requantises the bias, a different computation.
INFORMATIVE = ("onnxruntime-opt",)


def load_onnx(path: str | Path):
    """The ModelProto of ``path``, or a NoraError saying why it is not a usable ONNX file."""
    onnx = require("onnx", "nora check")
    path = Path(path)
    if not path.is_file():
        raise NoraError(f"no ONNX file at {path}")
    try:
        proto = onnx.load_model_from_string(path.read_bytes())
    except Exception:  # noqa: BLE001  protobuf and onnx raise several types for bad bytes
        raise NoraError(f"{path} is not a valid ONNX file (corrupt or truncated)") from None
    if not proto.graph.node or len(proto.graph.input) < 1 or len(proto.graph.output) < 1:
        raise NoraError(f"{path} holds no complete ONNX graph (corrupt, truncated or not a model)")
    return proto


def uses_qonnx_ops(proto) -> bool:
    return any(node.op_type in QONNX_OPS or node.domain.startswith("qonnx") for node in proto.graph.node)


def is_quantised_graph(proto) -> bool:
    """Does the graph quantise anything (QONNX or QCDQ nodes)?"""
    return uses_qonnx_ops(proto) or any(node.op_type in QCDQ_OPS for node in proto.graph.node)


def engines_for(proto) -> list[str]:
    """qonnx executes every file; onnxruntime only files without QONNX operators."""
    return ["qonnx"] if uses_qonnx_ops(proto) else list(ENGINES)


def input_shape(proto) -> tuple[int, ...]:
    """The graph input's shape including the batch dimension (symbolic dimensions read as 1)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)


def _check_inputs(proto, inputs: np.ndarray, source: str) -> np.ndarray:
    expected = input_shape(proto)[1:]
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if tuple(inputs.shape[1:]) != tuple(expected):
        raise NoraError(f"{source} takes inputs of shape {expected}, but the samples have shape {tuple(inputs.shape[1:])}")
    return inputs


def _reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def run_qonnx(proto, inputs: np.ndarray, source: str = "the ONNX file") -> np.ndarray:
    inputs = _check_inputs(proto, inputs, source)
    ModelWrapper = require("qonnx.core.modelwrapper", "nora check").ModelWrapper
    cleanup_model = require("qonnx.util.cleanup", "nora check").cleanup_model
    execute_onnx = require("qonnx.core.onnx_exec", "nora check").execute_onnx
    InferShapes = require("qonnx.transformation.infer_shapes", "nora check").InferShapes
    try:
        model = cleanup_model(ModelWrapper(copy.deepcopy(proto))).transform(InferShapes())
        name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
        outputs = [execute_onnx(model, {name_in: inputs[i : i + 1]})[name_out] for i in range(len(inputs))]
    except Exception as exc:  # noqa: BLE001  qonnx/onnxruntime errors have no common type
        raise NoraError(f"qonnx cannot load or execute {source}: {_reason(exc)}") from None
    return np.concatenate(outputs)


def run_onnxruntime(proto, inputs: np.ndarray, source: str = "the ONNX file", optimized: bool = False) -> np.ndarray:
    """Outputs of onnxruntime; ``optimized`` turns its graph optimisations on (how it deploys)."""
    inputs = _check_inputs(proto, inputs, source)
    ort = require("onnxruntime", "nora check")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: initializer notices are not the user's concern
    # Execute the graph as written: onnxruntime's optimisers (from the basic level up) fuse
    # QuantizeLinear/DequantizeLinear pairs into integer kernels with their own requantisation,
    # which is a different computation (measured on a LeNet-5 QCDQ file: logits off by 0.75).
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name_in = session.get_inputs()[0].name
        outputs = [session.run(None, {name_in: inputs[i : i + 1]})[0] for i in range(len(inputs))]
    except Exception as exc:  # noqa: BLE001  onnxruntime errors have no common type
        raise NoraError(f"onnxruntime cannot load or execute {source}: {_reason(exc)}") from None
    return np.concatenate(outputs)


def run_onnxruntime_optimized(proto, inputs: np.ndarray, source: str = "the ONNX file") -> np.ndarray:
    return run_onnxruntime(proto, inputs, source, optimized=True)


RUNNERS = {"qonnx": run_qonnx, "onnxruntime": run_onnxruntime, "onnxruntime-opt": run_onnxruntime_optimized}
