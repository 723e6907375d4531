"""Latency of one compute layer, measured on compiled code on this host, with a cache keyed by its configuration.

A candidate compression policy changes each Conv2d/Linear layer's channels and bit widths; the
search needs its latency thousands of times, but the number of distinct layer configurations is
small. So each configuration is compiled and timed once per backend and kept in a JSON cache.

Backends and the kernels that really execute here:

* ``tvm``: TVM tensor-expression kernels compiled for this CPU with LLVM, default (untuned)
  schedules: fp32 conv/dense, int8 x int8 -> int32 conv/dense, and bit-serial conv/dense
  (``topi.nn.bitserial_*``, bit-packed popcount arithmetic) for weights and activations of 1-7 bits.
  Bit-serial packing needs the input channels in multiples of 8; other sub-8-bit layers run on the
  int8 kernel (the values fit).
* ``onnxruntime``: fp32 ``Conv``/``Gemm`` and the int8 ``QLinearConv``/``QLinearMatMul`` kernels;
  onnxruntime has no sub-8-bit kernel, so every 2-8 bit layer runs on int8.
* ``bitops``: no execution; latency is a cost model (MACs x weight bits x activation bits, fp32 as
  32 x 32). Used where no backend can run a configuration, and always labelled ``estimated``.

Each layer is timed alone, batch 1, one thread, after warm-up, over repeated rounds (mean, std,
median and a robust spread are kept). The estimate is the fastest round: on a shared host the
noise only ever slows a round down (preemption, a neighbour's cache traffic), so the fastest round
is the least disturbed one, and the median still moves when most rounds are disturbed. The per-call
cost of a no-op kernel on the same backend (Python and runtime dispatch, several microseconds) is
measured once and subtracted, so that a sum over layers approaches the compiled model's latency
instead of counting the dispatch once per layer.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from nora.errors import NoraError
from nora.io import atomic_write_json

FP32 = 32
BACKENDS = ("tvm", "onnxruntime", "bitops")


@dataclass(frozen=True)
class LayerSpec:
    """A compute layer as the compiler sees it: shapes after pruning and the bit widths (32 = float)."""

    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    height: int = 1  # input spatial size (conv only)
    width: int = 1
    w_bits: int = FP32
    a_bits: int = FP32

    def key(self) -> str:
        return (f"{self.kind}:c{self.in_channels}-{self.out_channels}:k{self.kernel}s{self.stride}p{self.padding}"
                f"g{self.groups}:hw{self.height}x{self.width}:w{self.w_bits}a{self.a_bits}")

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "linear":
            return 1, 1
        return ((self.height + 2 * self.padding - self.kernel) // self.stride + 1,
                (self.width + 2 * self.padding - self.kernel) // self.stride + 1)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return self.out_channels * oh * ow * (self.in_channels // self.groups) * self.kernel * self.kernel

    @property
    def bitops(self) -> int:
        return self.macs * self.w_bits * self.a_bits

    @property
    def quantised(self) -> bool:
        return self.w_bits < FP32 and self.a_bits < FP32

    def bytes_moved(self) -> int:
        """Input + weights + output bytes at the stored precision (lower bound on traffic)."""
        wb = self.w_bits / 8 if self.quantised else 4
        ab = self.a_bits / 8 if self.quantised else 4
        oh, ow = self.out_hw
        n_in = self.in_channels * self.height * self.width
        n_w = self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2
        n_out = self.out_channels * oh * ow
        return int(math.ceil(n_in * ab + n_w * wb + n_out * 4))


@dataclass
class Timing:
    """Seconds per call over ``repeats`` timed rounds of ``number`` calls each, after warm-up."""

    mean: float
    std: float
    repeats: int
    number: int
    samples: list[float] = field(default_factory=list)

    @property
    def cv(self) -> float:
        return self.std / self.mean if self.mean > 0 else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def robust_std(self) -> float:
        """1.4826 x the median absolute deviation: the std of normal noise, blind to preempted rounds."""
        mid = self.median
        return 1.4826 * statistics.median(abs(s - mid) for s in self.samples)


def time_callable(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 5, number: int = 0,
                  min_round_s: float = 2e-3) -> Timing:
    """Warm up, then time ``repeats`` rounds; ``number=0`` picks calls per round to fill ``min_round_s``."""
    if repeats < 1 or warmup < 0:
        raise NoraError(f"timing needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    if number <= 0:
        start = time.perf_counter()
        fn()
        one = max(time.perf_counter() - start, 1e-7)
        number = max(1, min(1000, int(min_round_s / one)))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    std = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return Timing(statistics.fmean(samples), std, repeats, number, samples)


def interleaved_rounds(passes: dict[str, Callable[[], object]], rounds: int,
                       sync: Callable[[], object] | None = None) -> dict[str, list[float]]:
    """Seconds of one call of every pass, round by round, after one warm-up call each: a drift in the
    machine's speed hits every pass alike. ``sync`` (a device synchronisation) closes each timing."""
    if rounds < 1:
        raise NoraError(f"timing needs rounds >= 1, got {rounds}")
    for fn in passes.values():
        fn()
    if sync is not None:
        sync()
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(rounds):
        for name, fn in passes.items():
            start = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    return times


def paired_median(times: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of ``name``'s time over ``baseline``'s in the same round: on a host whose
    speed wanders, steadier than a ratio of each pass's fastest round."""
    return statistics.median(a / b for a, b in zip(times[name], times[baseline]))


@dataclass
class LayerLatency:
    spec_key: str
    backend: str
    kernel: str  # what executed: "fp32", "int8", "bitserial", or "estimated"
    seconds: float  # fastest timed round net of the per-call overhead: what the search adds up
    spread_s: float  # robust std over the rounds (1.4826 x MAD): a shared host preempts some rounds
    compile_s: float = 0.0
    measured: bool = True
    note: str = ""
    overhead_s: float = 0.0  # per-call cost of a no-op on this backend, already subtracted
    raw_mean_s: float = 0.0  # plain mean and std over the rounds, overhead included
    raw_std_s: float = 0.0

    @property
    def cv(self) -> float:
        """Robust coefficient of variation of one call's time (overhead included)."""
        total = self.seconds + self.overhead_s
        return self.spread_s / total if total > 0 else 0.0


# ----------------------------------------------------------------------------------- backends
def bitops_seconds(spec: LayerSpec) -> float:
    """Cost-model 'seconds': 1 s per 1e12 bit-operations (only ratios between candidates mean anything)."""
    return spec.bitops / 1e12


def tvm_target():
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu() if hasattr(tvm.target.codegen, "llvm_get_system_cpu") else "generic"
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu})


def kernel_kind(backend: str, spec: LayerSpec) -> str:
    """The kernel a backend runs for this configuration (before trying it)."""
    if backend == "bitops":
        return "estimated"
    if not spec.quantised:
        return "fp32"
    if (backend == "tvm" and max(spec.w_bits, spec.a_bits) < 8 and spec.in_channels % 8 == 0
            and spec.groups == 1):
        return "bitserial"
    return "int8"


def executed_spec(backend: str, spec: LayerSpec) -> LayerSpec:
    """The configuration that really executes, so that layers running the same kernel share one cache
    entry: a float kernel for any layer with a float side (its quantised side only changes accuracy),
    the 8 x 8-bit kernel for every int8-kernel layer; bit-serial kernels differ per bit width."""
    kind = kernel_kind(backend, spec)
    if kind == "fp32":
        return replace(spec, w_bits=FP32, a_bits=FP32)
    if kind == "int8":
        return replace(spec, w_bits=8, a_bits=8)
    return spec


def _tvm_kernel(spec: LayerSpec) -> tuple[str, Callable[[], object]]:
    """Compile the layer with TVM TE; return (kernel kind, a zero-argument call)."""
    import tvm
    from tvm import te, topi

    kind = kernel_kind("tvm", spec)
    dtype, out_dtype = {"fp32": ("float32", "float32"), "bitserial": ("uint8", "int16"),
                        "int8": ("int8", "int32")}[kind]
    rng = np.random.default_rng(0)
    if spec.kind == "conv":
        if spec.groups != 1:
            raise NoraError(f"tvm backend: grouped convolutions are not supported ({spec.key()})")
        ishape = (1, spec.in_channels, spec.height, spec.width)
        wshape = (spec.out_channels, spec.in_channels, spec.kernel, spec.kernel)
        data = te.placeholder(ishape, dtype=dtype, name="data")
        weight = te.placeholder(wshape, dtype=dtype, name="weight")
        if kind == "bitserial":
            out = topi.nn.bitserial_conv2d_nchw(data, weight, spec.stride, spec.padding, spec.a_bits, spec.w_bits,
                                                pack_dtype="uint8", out_dtype=out_dtype, unipolar=True)
        else:
            out = topi.nn.conv2d_nchw(data, weight, spec.stride, spec.padding, 1, out_dtype=out_dtype)
    else:
        ishape, wshape = (1, spec.in_channels), (spec.out_channels, spec.in_channels)
        data = te.placeholder(ishape, dtype=dtype, name="data")
        weight = te.placeholder(wshape, dtype=dtype, name="weight")
        if kind == "bitserial":
            out = topi.nn.bitserial_dense(data, weight, spec.a_bits, spec.w_bits, pack_dtype="uint8",
                                          out_dtype=out_dtype, unipolar=True)
        else:
            out = topi.nn.dense(data, weight, out_dtype=out_dtype)
    func = te.create_prim_func([data, weight, out])
    lib = tvm.compile(func, target=tvm_target())
    dev = tvm.cpu()
    make = tvm.runtime.tensor if hasattr(tvm.runtime, "tensor") else tvm.nd.array

    def sample(shape):
        if dtype == "float32":
            return rng.standard_normal(shape).astype("float32")
        high = 2 ** min(spec.a_bits, spec.w_bits, 7)
        return rng.integers(0, high, shape).astype(dtype)

    args = [make(sample(ishape), dev), make(sample(wshape), dev),
            make(np.zeros([int(s) for s in out.shape], str(out.dtype)), dev)]
    fn = lib.mod["main"]
    return kind, lambda: fn(*args)


def _ort_kernel(spec: LayerSpec) -> tuple[str, Callable[[], object]]:
    """Build a one-node ONNX graph (float or QLinear int8) and run it in onnxruntime on one thread."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    quant = spec.quantised
    kind = "int8" if quant else "fp32"
    if spec.kind == "conv":
        ishape = [1, spec.in_channels, spec.height, spec.width]
        wshape = [spec.out_channels, spec.in_channels // spec.groups, spec.kernel, spec.kernel]
        attrs = dict(kernel_shape=[spec.kernel] * 2, strides=[spec.stride] * 2, pads=[spec.padding] * 4,
                     group=spec.groups)
    else:
        ishape, wshape, attrs = [1, spec.in_channels], [spec.in_channels, spec.out_channels], {}
    inits = []
    if not quant:
        inits.append(numpy_helper.from_array(rng.standard_normal(wshape).astype(np.float32), "W"))
        op = "Conv" if spec.kind == "conv" else "MatMul"
        nodes = [helper.make_node(op, ["X", "W"], ["Y"], **attrs)]
        xtype, x = TensorProto.FLOAT, rng.standard_normal(ishape).astype(np.float32)
        ytype = TensorProto.FLOAT
    else:
        inits += [numpy_helper.from_array(rng.integers(-127, 128, wshape).astype(np.int8), "W"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                  numpy_helper.from_array(np.array(0, np.uint8), "xz"),
                  numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
                  numpy_helper.from_array(np.array(0, np.int8), "wz"),
                  numpy_helper.from_array(np.array(0.1, np.float32), "ys"),
                  numpy_helper.from_array(np.array(0, np.uint8), "yz")]
        op = "QLinearConv" if spec.kind == "conv" else "QLinearMatMul"
        nodes = [helper.make_node(op, ["X", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["Y"], **attrs)]
        xtype, x = TensorProto.UINT8, rng.integers(0, 256, ishape).astype(np.uint8)
        ytype = TensorProto.UINT8
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", xtype, ishape)],
                              [helper.make_tensor_value_info("Y", ytype, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"X": x}
    return kind, lambda: session.run(None, feed)


def _tvm_noop() -> Callable[[], object]:
    import tvm
    from tvm import te

    a = te.placeholder((1,), name="a")
    b = te.compute((1,), lambda i: a[i], name="b")
    lib = tvm.compile(te.create_prim_func([a, b]), target=tvm_target())
    make = tvm.runtime.tensor if hasattr(tvm.runtime, "tensor") else tvm.nd.array
    args = [make(np.zeros(1, "float32"), tvm.cpu()), make(np.zeros(1, "float32"), tvm.cpu())]
    fn = lib.mod["main"]
    return lambda: fn(*args)


def _ort_noop() -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "noop",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"X": np.zeros(1, np.float32)}
    return lambda: session.run(None, feed)


_KERNELS = {"tvm": _tvm_kernel, "onnxruntime": _ort_kernel}
_NOOPS = {"tvm": _tvm_noop, "onnxruntime": _ort_noop}


def backend_available(name: str) -> bool:
    try:
        __import__({"tvm": "tvm", "onnxruntime": "onnxruntime", "bitops": "numpy"}[name])
    except ImportError:
        return False
    return True


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise NoraError(f"unknown latency backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not backend_available(name):
        extra = "apache-tvm" if name == "tvm" else name
        raise NoraError(f"latency backend {name!r} needs the package {extra} (pip install 'nora[compress]')")
    return name


def host_id() -> str:
    return f"{platform.machine()}-{platform.processor() or 'cpu'}-{platform.node()}"


class LatencyCache:
    """Measured layer latencies keyed by backend + layer configuration, kept in one JSON file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.hits = self.misses = 0
        if self.path and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                raise NoraError(f"latency cache {self.path} is not valid JSON; delete it to re-measure") from None
            if data.get("host") == host_id():
                self.entries = data.get("entries", {})

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def get(self, key: str) -> LayerLatency | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return LayerLatency(**entry)

    def put(self, key: str, value: LayerLatency) -> None:
        self.entries[key] = asdict(value)

    def save(self) -> None:
        if self.path:
            atomic_write_json(self.path, {"host": host_id(), "entries": self.entries})


class LatencyMeter:
    """Measures (or recalls) each layer configuration's latency on one backend."""

    def __init__(self, backend: str = "tvm", cache: LatencyCache | None = None, *, warmup: int = 3,
                 repeats: int = 5, subtract_overhead: bool = True):
        self.backend = check_backend(backend)
        self.cache = cache if cache is not None else LatencyCache()
        self.warmup, self.repeats = warmup, repeats
        self.subtract_overhead = subtract_overhead
        self.compile_s = self.timing_s = 0.0
        self.failures: list[dict] = []
        self._overhead: float | None = None

    def overhead(self) -> float:
        """Seconds per call of a no-op kernel on this backend (Python and runtime dispatch), measured once."""
        if self._overhead is None:
            if self.backend == "bitops" or not self.subtract_overhead:
                self._overhead = 0.0
            else:
                key = f"{self.backend}|noop"  # not counted in the hit rate, which is about layers
                if key not in self.cache.entries:
                    timing = time_callable(_NOOPS[self.backend](), warmup=self.warmup, repeats=self.repeats)
                    self.cache.put(key, LayerLatency("noop", self.backend, "noop", timing.best, timing.robust_std,
                                                     raw_mean_s=timing.mean, raw_std_s=timing.std))
                self._overhead = float(self.cache.entries[key]["seconds"])
        return self._overhead

    def layer(self, spec: LayerSpec) -> LayerLatency:
        """The latency of one layer net of the per-call overhead (cached by the configuration that executes)."""
        run = executed_spec(self.backend, spec)
        key = f"{self.backend}|{'net' if self.subtract_overhead else 'raw'}|{run.key()}"
        cached = self.cache.get(key)
        if cached is None:
            cached = self._measure(run)
            self.cache.put(key, cached)
        if cached.kernel != "failed":
            return cached
        return self._fallback(spec, cached.note)  # estimated for the bits asked for, not the kernel's

    def _measure(self, spec: LayerSpec) -> LayerLatency:
        if self.backend == "bitops":
            return LayerLatency(spec.key(), "bitops", "estimated", bitops_seconds(spec), 0.0, measured=False,
                                note="bit-operations cost model")
        start = time.perf_counter()
        try:
            kind, fn = _KERNELS[self.backend](spec)
            fn()
        except Exception as exc:  # a compiler failure is data for the search, not a crash
            compile_s = time.perf_counter() - start
            self.compile_s += compile_s
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            self.failures.append({"layer": spec.key(), "backend": self.backend, "error": message})
            return LayerLatency(spec.key(), self.backend, "failed", 0.0, 0.0, compile_s, measured=False, note=message)
        compile_s = time.perf_counter() - start
        self.compile_s += compile_s
        start = time.perf_counter()
        timing = time_callable(fn, warmup=self.warmup, repeats=self.repeats)
        overhead = self.overhead()
        self.timing_s += time.perf_counter() - start
        # What is left after the dispatch cost; never below 1% of the raw time (timing noise).
        net = max(timing.best - overhead, 0.01 * timing.best)
        return LayerLatency(spec.key(), self.backend, kind, net, timing.robust_std, compile_s, overhead_s=overhead,
                            raw_mean_s=timing.mean, raw_std_s=timing.std)

    def _fallback(self, spec: LayerSpec, message: str) -> LayerLatency:
        """No kernel for this configuration: scale the measured fp32 layer by the bit-operations ratio."""
        reference = replace(spec, w_bits=FP32, a_bits=FP32)
        if spec.quantised:
            base = self.layer(reference)
            if base.measured:
                scale = spec.bitops / reference.bitops
                return LayerLatency(spec.key(), self.backend, "estimated", base.seconds * scale, base.spread_s * scale,
                                    measured=False, note=f"no kernel ({message}); fp32 latency x bit-operations ratio")
        return LayerLatency(spec.key(), self.backend, "estimated", bitops_seconds(spec), 0.0, measured=False,
                            note=f"no kernel ({message}); bit-operations cost model")
