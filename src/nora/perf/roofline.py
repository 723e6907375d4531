"""The host's roofline: peak FLOP/s, the read bandwidth of each cache level and of memory, and where layers sit.

Peak is measured, not taken from a data sheet: the best of a large fp32 matrix product in PyTorch
and in onnxruntime, on one thread and on all threads, and onnxruntime's int8 ``MatMulInteger`` on
one thread (the roof for int8 kernels; bit-serial and fp32 kernels are held against the fp32
peak). Bandwidth comes from a working-set sweep: vectorised reads (``torch.sum`` over a stride-0
view that re-reads one buffer) of buffers from 4 KiB to beyond the last-level cache; each level's
bandwidth is the median over the working sets that fit in it and not in the level below (cache
sizes from sysfs).

A layer's position: arithmetic intensity I = FLOPs / bytes (inputs + weights + outputs at the
stored precision), the level its working set fits in, the attainable rate
``min(peak, I x bandwidth(level))``, and the bound that explains it: compute or that level's
bandwidth, or "overhead" where the layer reaches under 10% of its roof (launch cost, untuned
schedule) -- neither limit explains it then.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nora.perf.latency import LayerLatency, LayerSpec

OVERHEAD_SHARE = 0.1


def cache_levels() -> list[tuple[str, int]]:
    """(name, bytes) of the data caches of CPU 0, smallest first; a 32K/1M/32M guess where sysfs is absent."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    levels = {}
    for index in sorted(base.glob("index*")) if base.exists() else []:
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(size[-1], 1)
        levels[f"L{level}"] = int(size.rstrip("KMG")) * scale
    if not levels:
        levels = {"L1": 32 * 1024, "L2": 1024 ** 2, "L3": 32 * 1024 ** 2}
    return sorted(levels.items(), key=lambda item: item[1])


def _with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _best_rate(fn, work: float, seconds: float) -> float:
    fn()
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        fn()
        best = max(best, work / (time.perf_counter() - start))
    return best


def _ort_matmul(size: int, threads: int, integer: bool):
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if integer:
        weight, x = np.ones((size, size), np.int8), np.ones((size, size), np.uint8)
        node, xtype, ytype = helper.make_node("MatMulInteger", ["X", "W"], ["Y"]), TensorProto.UINT8, TensorProto.INT32
    else:
        weight, x = np.ones((size, size), np.float32), np.ones((size, size), np.float32)
        node, xtype, ytype = helper.make_node("MatMul", ["X", "W"], ["Y"]), TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("X", xtype, [size, size])],
                              [helper.make_tensor_value_info("Y", ytype, None)],
                              initializer=[numpy_helper.from_array(weight, "W")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"X": x})


def peak_flops(threads: int, size: int = 384, seconds: float = 0.3, integer: bool = False) -> float:
    """Best ops/s of an n x n matrix product: fp32 (PyTorch BLAS or onnxruntime, the faster), or int8 (onnxruntime).

    384 is large enough to be compute bound (the operands fit in L2) and short enough (about 0.2 ms)
    that some calls run undisturbed on a shared host; a 1024 product measured half the peak there.
    """
    work = 2.0 * size ** 3
    rates = []
    try:
        rates.append(_best_rate(_ort_matmul(size, threads, integer), work, seconds))
    except ImportError:
        if integer:
            return 0.0
    if not integer:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        out = torch.empty(size, size)
        rates.append(_with_threads(threads, lambda: _best_rate(lambda: torch.mm(a, b, out=out), work, seconds)))
    return max(rates)


def bandwidth_sweep(max_bytes: int | None = None, points_per_octave: int = 1,
                    seconds_per_point: float = 0.05) -> list[dict]:
    """Read bandwidth (bytes/s, one thread, best round) for working sets from 4 KiB to ``max_bytes``."""
    levels = cache_levels()
    max_bytes = max_bytes or 4 * levels[-1][1]
    sizes, size = [], 4096.0
    while size <= max_bytes:
        sizes.append(int(size) // 4 * 4)
        size *= 2 ** (1 / points_per_octave)

    def run():
        rows = []
        for nbytes in sizes:
            x = torch.ones(nbytes // 4)
            # One call reads the same buffer ``reps`` times (a stride-0 view), so call overhead cannot
            # hide the bandwidth of a set that fits in L1.
            reps = max(1, int(8e6 // max(nbytes // 4, 1)))
            view = x.expand(reps, nbytes // 4)
            best = _best_rate(view.sum, reps * nbytes, seconds_per_point)
            rows.append({"bytes": nbytes, "bandwidth": best, "level": level_of(nbytes, levels)})
        return rows

    return _with_threads(1, run)


def level_of(nbytes: int, levels: list[tuple[str, int]]) -> str:
    for name, size in levels:
        if nbytes <= size:
            return name
    return "memory"


@dataclass
class Roofline:
    peak_core: float
    peak_all: float
    peak_int8_core: float
    threads: int
    levels: list[tuple[str, int]]
    bandwidth: dict[str, float]  # level name -> bytes/s (median of its working sets)
    sweep: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def measure_roofline(max_bytes: int | None = None, seconds: float = 0.3) -> Roofline:
    levels = cache_levels()
    threads = os.cpu_count() or 1
    sweep = bandwidth_sweep(max_bytes)
    bandwidth = {}
    for name in [n for n, _ in levels] + ["memory"]:
        # A set counts for the smallest level it fits in, so each level's sets miss the level below.
        values = sorted(r["bandwidth"] for r in sweep if r["level"] == name)
        if values:
            bandwidth[name] = values[len(values) // 2]
    return Roofline(peak_flops(1, seconds=seconds), peak_flops(threads, seconds=seconds),
                    peak_flops(1, seconds=seconds, integer=True), threads, levels, bandwidth, sweep)


@dataclass
class LayerPoint:
    name: str
    spec: str
    kernel: str
    latency_s: float
    flops: int
    bytes: int
    intensity: float
    achieved: float
    level: str
    attainable: float
    bound: str
    share_of_roof: float


def place(name: str, spec: LayerSpec, latency: LayerLatency, roof: Roofline) -> LayerPoint:
    """Where one measured layer sits on the single-core roofline, and which limit explains it."""
    flops = 2 * spec.macs
    nbytes = spec.bytes_moved()
    intensity = flops / max(nbytes, 1)
    level = level_of(nbytes, roof.levels)
    bandwidth = roof.bandwidth.get(level) or min(roof.bandwidth.values())
    memory_roof = intensity * bandwidth
    peak = roof.peak_int8_core if latency.kernel == "int8" and roof.peak_int8_core > 0 else roof.peak_core
    attainable = min(peak, memory_roof)
    achieved = flops / latency.seconds if latency.seconds > 0 else 0.0
    share = achieved / attainable if attainable > 0 else 0.0
    if share < OVERHEAD_SHARE:
        bound = "overhead"
    else:
        bound = "compute" if peak <= memory_roof else f"{level} bandwidth"
    return LayerPoint(name, spec.key(), latency.kernel, latency.seconds, flops, nbytes, intensity, achieved, level,
                      attainable, bound, share)
