"""``nora profile``: the host's roofline, each layer's latency per backend and bit width, and why it is slow."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.io import atomic_write_json, atomic_write_text
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


def profile_model(model: nn.Module, input_shape: tuple[int, ...], out_dir: str | Path, *,
                  backends: Sequence[str] = ("tvm", "onnxruntime"), bits: Sequence[int] = (32, 8, 4, 2),
                  warmup: int = 3, repeats: int = 5, max_bytes: int | None = None,
                  cache_path: str | Path | None = None) -> dict:
    """Measure the roofline and every compute layer at each bit width on each backend; write JSON/CSV/PNG."""
    from nora.perf.plots import bandwidth_plot, roofline_plot

    backends = [check_backend(b) for b in backends]
    bits = check_bits(bits)
    out_dir = Path(out_dir)
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
    result = {"input_shape": list(input_shape), "roofline": roof.to_dict(), "layers": rows, "whole_model": whole,
              "kernels": kernels}
    atomic_write_json(out_dir / "profile.json", result)
    if rows:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out_dir / "layers.csv", text.getvalue())
    atomic_write_text(out_dir / "bandwidth.csv", "bytes,level,bandwidth_Bps\n" + "".join(
        f"{r['bytes']},{r['level']},{r['bandwidth']:.6g}\n" for r in roof.sweep))
    for backend in backends:
        chosen = [p for p, r in zip(points, rows) if r["backend"] == backend]
        roofline_plot(roof, chosen, out_dir / f"roofline-{backend}.png", title=f"{backend}: layers on the host roofline")
    bandwidth_plot(roof, out_dir / "bandwidth.png")
    return result


def profile(model: str | None = None, *, checkpoint: str | None = None, input_shape: Sequence[int] | None = None,
            num_classes: int | None = None, out_dir: str | Path | None = None, **options) -> dict:
    """``nora profile``: build the named model (or load a checkpoint) and profile it; returns the result with ``out``."""
    from nora.models import build_model
    from nora.train.checkpoint import load_model

    if (model is None) == (checkpoint is None):
        raise NoraError("give exactly one of --model or --checkpoint")
    if checkpoint:
        net, _ = load_model(checkpoint)
    else:
        net = build_model(model, input_shape=tuple(input_shape) if input_shape else None, num_classes=num_classes)
    out = Path(out_dir) if out_dir else Path("runs") / f"profile-{net.arch}-{'x'.join(map(str, net.input_shape))}"
    result = profile_model(net.eval(), tuple(net.input_shape), out, **options)
    result["out"] = str(out)
    return result
