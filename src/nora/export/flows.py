"""FPGA flows on exported QONNX files: hls4ml conversion + C++ emulation, and what a flow cannot map.

``run_hls4ml`` follows hls4ml's documented QONNX path (hls4ml 1.3, qonnx 1.0): qonnx cleanup,
channels-last conversion, Gemm -> MatMul, ``convert_from_onnx_model`` (Vitis backend, io_parallel,
precisions inferred from the Quant nodes), ``compile`` (g++) and ``predict``. That is the C++ model
of the firmware, so agreeing with qonnx means the FPGA computes what PyTorch trained.

``flow_problems`` reads the graph and names the constructs hls4ml 1.3 cannot map or only maps
approximately (measured on the zoo, see benchmarks/RESULTS.md):

- a per-channel float weight scale on a convolution or dense layer with a bias: hls4ml's scale
  propagation handles a non-scalar weight scale only without a bias, and then stops with an IndexError;
- a non-power-of-two activation scale on a tensor with several consumers (a residual fan-out): the
  rescaling lands on the first consumer only, so the others read the wrong domain;
- a global average pool (or ReduceMean) feeding a Flatten/Reshape: qonnx leaves it channels-first and
  hls4ml's emulation divides by zero (nora's export folds ResNet's pool into the classifier instead);
- any other non-power-of-two scale: becomes a fixed-point scaling layer, so results are approximate;
- a float graph input: the first layer computes on float values, so results are approximate;
- an operator neither qonnx nor hls4ml knows (a custom domain).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from nora.errors import NoraError
from nora.quant.backend import require

FLOWS = ("hls4ml",)
#: Domains whose operators qonnx executes (standard ONNX and QONNX's own).
KNOWN_DOMAINS = ("", "ai.onnx", "qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general")
_GLOBAL_POOLS = {"GlobalAveragePool", "ReduceMean"}
_FLATTENS = {"Flatten", "Reshape"}


class FlowWarning(UserWarning):
    """An exported graph holds a construct an FPGA flow cannot map (exactly)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    node: str  # the ONNX node (or tensor) concerned
    op_type: str
    fatal: bool  # the flow stops (True) or computes something approximate (False)
    reason: str
    layer: tuple[str, str] | None = None  # (name, type) of the model's layer behind the node, where known

    def describe(self, flow: str = "hls4ml") -> str:
        verdict = "cannot map" if self.fatal else "maps only approximately"
        where = f"node '{self.node}' ({self.op_type})"
        if self.layer:
            where = f"layer '{self.layer[0]}' ({self.layer[1]}; ONNX node '{self.node}', {self.op_type})"
        return f"{flow} {verdict} {where}: {self.reason}"


def _initialisers(proto) -> dict[str, np.ndarray]:
    numpy_helper = require("onnx.numpy_helper", "FPGA flow checks")
    return {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}


def _all_powers_of_two(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or (values <= 0).any():
        return False
    mantissa, _ = np.frexp(values)
    return bool((mantissa == 0.5).all())


def flow_problems(proto, flow: str = "hls4ml") -> list[Problem]:
    """What ``flow`` cannot take (fatal) or only approximates in the graph ``proto``, in node order."""
    if flow not in FLOWS:
        raise NoraError(f"unknown flow {flow!r}; choose one of {', '.join(FLOWS)}")
    constants = _initialisers(proto)
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems: list[Problem] = []
    first = _first_compute(proto.graph.input[0].name, consumers) if proto.graph.input else None
    if first is not None and first.op_type not in ("Quant", "BipolarQuant") and any(n.op_type == "Quant" for n in proto.graph.node):
        problems.append(Problem(first.name or first.op_type, first.op_type, False, "the graph input is not quantised, "
                                "so the first layer computes on float inputs (give the model input_bits)"))
    for node in proto.graph.node:
        name = node.name or node.op_type
        if node.domain not in KNOWN_DOMAINS:
            problems.append(Problem(name, f"{node.domain}.{node.op_type}", True, "an operator of a domain no flow "
                                    "knows (FPGA flows read standard ONNX and QONNX operators)"))
            continue
        if node.op_type == "Quant":
            scale = constants.get(node.input[1]) if len(node.input) > 1 else None
            if scale is None or _all_powers_of_two(scale):
                continue
            on_weights = node.input[0] in constants
            users = consumers.get(node.output[0], [])
            if on_weights and scale.size > 1 and any(_has_bias(user, consumers) for user in users):
                problems.append(Problem(name, "Quant", True, "per-channel float weight scale on a layer with a bias "
                                        "(hls4ml's scale propagation stops); use preset fpga (per-tensor power-of-two scales)"))
            elif not on_weights and len(users) > 1:
                problems.append(Problem(name, "Quant", True, f"non-power-of-two scale on a tensor with {len(users)} "
                                        "consumers (a fan-out: only the first gets the rescaling); use preset fpga"))
            else:
                problems.append(Problem(name, "Quant", False, "non-power-of-two scale (a fixed-point scaling layer, "
                                        "results differ in the last bits); use preset fpga for bit-exact results"))
        elif node.op_type in _GLOBAL_POOLS and any(u.op_type in _FLATTENS for u in consumers.get(node.output[0], [])):
            problems.append(Problem(name, node.op_type, True, "a global average pool before a flatten stays channels-first "
                                    "(hls4ml's emulation fails); fold the pool into the following dense layer"))
    return problems


def _first_compute(name: str, consumers):
    """The first node after ``name`` that is not a pure reshuffle (Transpose, Reshape, Flatten)."""
    node = None
    while True:
        users = consumers.get(name, [])
        if len(users) != 1:
            return users[0] if users else node
        node = users[0]
        if node.op_type not in ("Transpose", "Reshape", "Flatten"):
            return node
        name = node.output[0]


def _has_bias(layer, consumers) -> bool:
    """Does the Conv/Gemm/MatMul ``layer`` add a bias (own input, or an Add right after)?"""
    if layer.op_type in ("Conv", "Gemm") and len(layer.input) > 2:
        return True
    if layer.op_type in ("Conv", "MatMul", "Gemm"):
        return any(user.op_type == "Add" for user in consumers.get(layer.output[0], []))
    return False


_COMPUTE = ("Conv", "Gemm", "MatMul")


def name_layers(problems: list[Problem], proto, weight_layers: list[tuple[str, str]],
                activations: list[tuple[str, str]]) -> list[Problem]:
    """Attach the model's layer names: the k-th Conv/Gemm/MatMul node is the k-th weight layer called,
    the k-th activation Quant node the k-th quantised-activation call (both in execution order; when
    the counts differ, nothing is named)."""
    constants = {init.name for init in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    compute = [n.name for n in proto.graph.node if n.op_type in _COMPUTE]
    acts = [n.name for n in proto.graph.node if n.op_type == "Quant" and n.input[0] not in constants]
    by_node = {}
    if len(compute) == len(weight_layers):
        for node in proto.graph.node:
            if node.op_type in ("Quant", "BipolarQuant") and node.input[0] in constants:
                users = [u for u in consumers.get(node.output[0], []) if u.op_type in _COMPUTE]
                if users:
                    by_node[node.name] = weight_layers[compute.index(users[0].name)]
        by_node |= dict(zip(compute, weight_layers))
    if len(acts) == len(activations):
        by_node |= dict(zip(acts, activations))
    return [dataclasses.replace(p, layer=by_node.get(p.node)) for p in problems]


def warn_problems(problems: list[Problem], flow: str = "hls4ml") -> None:
    """Issue a ``FlowWarning`` per construct the flow cannot map and one for all approximations (export time)."""
    approximate = [p for p in problems if not p.fatal]
    for problem in problems:
        if problem.fatal:
            warnings.warn(problem.describe(flow), FlowWarning, stacklevel=3)
    if approximate:
        first = approximate[0].describe(flow).split(" only approximately ", 1)[1]
        warnings.warn(f"{flow} maps {len(approximate)} node(s) only approximately, first {first}", FlowWarning,
                      stacklevel=3)


@dataclasses.dataclass(frozen=True)
class Hls4mlResult:
    outputs: np.ndarray
    convert_seconds: float
    compile_seconds: float
    predict_seconds: float
    layers: int


def require_hls4ml():
    """hls4ml and a C++ compiler, or one line saying what to install."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import hls4ml  # noqa: PLC0415  optional, test-only extra
    except ImportError:
        raise NoraError("--flow hls4ml needs the 'hls4ml' package: pip install 'nora[fpga]' (hls4ml==1.3.0)") from None
    if shutil.which("g++") is None:
        raise NoraError("--flow hls4ml compiles the emulation with g++, which is not on PATH; install a C++ compiler "
                        "(Debian/Ubuntu: apt-get install g++)")
    return hls4ml


def _prepare(proto):
    """qonnx's preparation for hls4ml: cleanup, channels-last, Gemm -> MatMul, cleanup."""
    ModelWrapper = require("qonnx.core.modelwrapper", "--flow hls4ml").ModelWrapper
    cleanup_model = require("qonnx.util.cleanup", "--flow hls4ml").cleanup_model
    channels_last = require("qonnx.transformation.channels_last", "--flow hls4ml")
    gemm = require("qonnx.transformation.gemm_to_matmul", "--flow hls4ml")
    model = cleanup_model(ModelWrapper(copy.deepcopy(proto)))
    model = model.transform(channels_last.ConvertToChannelsLastAndClean())
    model = model.transform(gemm.GemmToMatMul())
    return cleanup_model(model)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def run_hls4ml(proto, inputs: np.ndarray, source: str = "the ONNX file", output_dir: str | Path | None = None,
               default_precision: str = "fixed<64,24>") -> Hls4mlResult:
    """Convert ``proto`` with hls4ml, compile its C++ emulation and run ``inputs`` (NCHW) through it.

    A graph hls4ml cannot take gives one NoraError naming the node (from ``flow_problems``) or, when
    the graph looks mappable, hls4ml's own first line. ``default_precision`` only reaches layers whose
    precision no Quant node fixes (float BatchNorm, Add); it is wide so those stay close to float.
    """
    fatal = [p for p in flow_problems(proto) if p.fatal]
    if fatal:
        raise NoraError(f"{source}: {fatal[0].describe()}")
    hls4ml = require_hls4ml()
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        folder = Path(output_dir) if output_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nora-hls4ml-")))
        chatter = io.StringIO()
        stack.enter_context(contextlib.redirect_stdout(chatter))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        try:
            model = _prepare(proto)
            config = hls4ml.utils.config.config_from_onnx_model(
                model, granularity="name", backend="Vitis", default_precision=default_precision)
            hls_model = hls4ml.converters.convert_from_onnx_model(
                model, output_dir=str(folder / "project"), backend="Vitis", io_type="io_parallel", hls_config=config)
        except Exception as exc:  # noqa: BLE001  hls4ml fails with many types inside its passes
            raise NoraError(f"{source}: hls4ml cannot convert the graph: {type(exc).__name__}: {_first_line(exc)}") from None
        converted = time.perf_counter()
        try:
            hls_model.compile()
        except Exception as exc:  # noqa: BLE001
            raise NoraError(f"{source}: hls4ml's C++ emulation does not compile: {_first_line(exc)}") from None
        compiled = time.perf_counter()
        # qonnx keeps the graph input as exported (NCHW) and transposes inside, unless it moved the input itself
        expected = tuple(model.get_tensor_shape(model.graph.input[0].name))[1:]
        if inputs.ndim > 2 and tuple(inputs.shape[1:]) != expected:
            inputs = np.moveaxis(inputs, 1, -1)
        try:
            outputs = np.asarray(hls_model.predict(np.ascontiguousarray(inputs)), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001
            raise NoraError(f"{source}: hls4ml's emulation fails: {_first_line(exc)}") from None
        done = time.perf_counter()
        layers = len(list(hls_model.get_layers()))
        produced = tuple(model.get_tensor_shape(model.graph.output[0].name))[1:]
    wanted = _output_shape(proto)
    outputs = outputs.reshape(len(inputs), *produced)
    if produced != wanted and len(wanted) > 1:  # a channels-last output back to the exported layout
        outputs = np.moveaxis(outputs, -1, 1)
    outputs = outputs.reshape(len(inputs), *wanted)
    if not np.isfinite(outputs).all():
        raise NoraError(f"{source}: hls4ml's emulation gives non-finite outputs")
    return Hls4mlResult(outputs, converted - started, compiled - converted, done - compiled, layers)


def _output_shape(proto) -> tuple[int, ...]:
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims)[1:]
