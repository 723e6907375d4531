"""``nora profile``: the host's roofline, each layer's latency per backend and bit width, and why it is slow."""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.perf.latency import FP32, LatencyCache, LatencyMeter, check_backend, time_callable
from nora.perf.layers import layer_specs
from nora.perf.roofline import measure_roofline, place


def check_bits(bits: Sequence[int]) -> list[int]:
    for b in bits:
        if b != FP32 and not 1 <= b <= 8:
            raise NoraError(f"bit widths must be 32 (float) or 1-8, got {b}")
    return list(dict.fromkeys(bits))


def whole_model_latency(model: nn.Module, input_shape: tuple[int, ...], backend: str, *, warmup: int = 3,
                        repeats: int = 5) -> dict:
    """fp32 latency of the whole compiled model (batch 1), one thread, or the reason it failed."""
    example = torch.zeros(1, *input_shape)
    start = time.perf_counter()
    try:
        if backend == "tvm":
            import tvm
            from tvm import relax
            from tvm.relax.frontend.torch import from_exported_program

            from nora.perf.latency import tvm_target

            program = torch.export.export(model.eval(), (example,))
            executable = tvm.compile(from_exported_program(program, keep_params_as_input=False), target=tvm_target())
            vm = relax.VirtualMachine(executable, tvm.cpu())
            make = tvm.runtime.tensor if hasattr(tvm.runtime, "tensor") else tvm.nd.array
            arg = make(example.numpy(), tvm.cpu())
            fn = lambda: vm["main"](arg)  # noqa: E731
        elif backend == "onnxruntime":
            import onnxruntime as ort

            import warnings

            buffer = io.BytesIO()
            with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices are not the user's concern
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, input_names=["x"])
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
            feed = {"x": example.numpy()}
            fn = lambda: session.run(None, feed)  # noqa: E731
        else:
            return {"backend": backend, "ok": False, "error": "no whole-model execution for the cost model"}
        fn()
    except Exception as exc:  # recorded, like any compile failure
        return {"backend": backend, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    compile_s = time.perf_counter() - start
    timing = time_callable(fn, warmup=warmup, repeats=repeats)
    return {"backend": backend, "ok": True, "seconds": timing.best, "cv": timing.robust_std / timing.median,
            "mean_s": timing.mean, "std_s": timing.std, "compile_s": compile_s}


@dataclasses.dataclass
class Profile:
    """What ``profile_model`` measured: ``data`` (JSON-ready: roofline, one row per layer, backend and
    bit width, whole-model timings, kernels that ran), the roofline itself and each row's point on it
    (for the plots the report writer draws), and ``backends`` in the order measured."""

    data: dict[str, Any]
    roof: Any
    points: list[Any]
    backends: list[str]


def profile_model(model: nn.Module, input_shape: tuple[int, ...], *,
                  backends: Sequence[str] = ("tvm", "onnxruntime"), bits: Sequence[int] = (32, 8, 4, 2),
                  warmup: int = 3, repeats: int = 5, max_bytes: int | None = None,
                  cache_path: str | Path | None = None) -> Profile:
    """Measure the roofline and every compute layer at each bit width on each backend."""
    backends = [check_backend(b) for b in backends]
    bits = check_bits(bits)
    torch_threads = torch.get_num_threads()
    roof = measure_roofline(max_bytes=max_bytes)
    base = layer_specs(model, input_shape)
    cache = LatencyCache(cache_path)
    rows, points = [], []
    for backend in backends:
        meter = LatencyMeter(backend, cache, warmup=warmup, repeats=repeats)
        for b in bits:
            for name, spec in base:
                spec = replace(spec, w_bits=b, a_bits=b)
                latency = meter.layer(spec)
                point = place(name, spec, latency, roof)
                points.append(point)
                rows.append({"backend": backend, "bits": b, **asdict(point), "spread_s": latency.spread_s,
                             "raw_mean_s": latency.raw_mean_s, "overhead_s": latency.overhead_s, "cv": latency.cv, "measured": latency.measured, "compile_s": latency.compile_s,
                             "note": latency.note})
    cache.save()
    whole = [whole_model_latency(model, input_shape, b, warmup=warmup, repeats=repeats) for b in backends
             if b != "bitops"]
    torch.set_num_threads(torch_threads)
    kernels = {f"{r['backend']} {r['bits']}-bit": sorted({x["kernel"] for x in rows
                                                          if x["backend"] == r["backend"] and x["bits"] == r["bits"]})
               for r in rows}
    data = {"input_shape": list(input_shape), "roofline": roof.to_dict(), "layers": rows, "whole_model": whole,
            "kernels": kernels}
    return Profile(data, roof, points, backends)


def profile(model: str | None = None, *, checkpoint: str | None = None, input_shape: Sequence[int] | None = None,
            num_classes: int | None = None, out_dir: str | Path | None = None, **options) -> tuple[Profile, Path]:
    """``nora profile``: build the named model (or load a checkpoint) and profile it; returns the
    profile and the folder it belongs in."""
    from nora.models import build_model
    from nora.train.checkpoint import load_model

    if (model is None) == (checkpoint is None):
        raise NoraError("give exactly one of --model or --checkpoint")
    if checkpoint:
        net, _ = load_model(checkpoint)
    else:
        net = build_model(model, input_shape=tuple(input_shape) if input_shape else None, num_classes=num_classes)
    out = Path(out_dir) if out_dir else Path("runs") / f"profile-{net.arch}-{'x'.join(map(str, net.input_shape))}"
    return profile_model(net.eval(), tuple(net.input_shape), **options), out
