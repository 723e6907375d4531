"""``check_export``: execute an exported file and compare it with the PyTorch model it came from.

Tolerance (decision): a sample is *within* when all its outputs satisfy
``|onnx - torch| <= atol + rtol * max |torch|`` (the maximum over all samples), and an engine passes
when at least ``min_match`` of the samples are within. Defaults: ``atol = 1e-4``; float graphs
``rtol = 1e-4``, ``min_match = 1`` (every sample); graphs with quantisers ``rtol = 1e-2``,
``min_match = 0.9``.

Why quantised graphs get more room: a float graph differs from PyTorch by float rounding only
(measured: below 1e-6 of the output scale). In a quantised graph that last-bit difference now and
then puts a value on the other side of a rounding boundary, which moves that activation by a whole
quantisation step, and the sample's outputs by the step times the gain downstream. Usually that is
well below 1% of the output scale (ResNet-8, 8-bit: 3% of CIFAR-10 samples flip, by at most 3e-4 of
the scale; 16-bit graphs flip often, by tiny amounts), but behind a narrow layer whose BatchNorm
amplifies, one flip can move a sample's outputs by more (the autoencoder's 8-unit bottleneck: one
sample in 64 off by 12% of the scale). An export error (wrong scale, rounding mode, layer order,
another model) moves most samples by a sizeable fraction of the scale. The report also gives the
share of samples that match to the float tolerance ("exact"), so flips stay visible, the largest
difference and the top-1 agreement.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nora.errors import NoraError
from nora.seeds import SeedTree
from nora.export.flows import FLOWS, flow_problems, run_hls4ml
from nora.export.execute import (
    INFORMATIVE,
    RUNNERS,
    engines_for,
    input_shape,
    is_quantised_graph,
    load_onnx,
    uses_qonnx_ops,
)

DEFAULT_ATOL = 1e-4
FLOAT_RTOL, FLOAT_MIN_MATCH = 1e-4, 1.0
QUANTISED_RTOL, QUANTISED_MIN_MATCH = 1e-2, 0.9


@dataclasses.dataclass(frozen=True)
class EngineResult:
    engine: str
    reference: str  # what the outputs were compared with: "pytorch", another engine, or "finite" (itself)
    max_abs_diff: float
    tolerance: float
    within: float  # share of samples whose outputs are all within the tolerance
    min_match: float  # the share needed to pass
    exact: float  # share of samples within the float tolerance (atol + FLOAT_RTOL * max |y|)
    argmax_agreement: float | None  # None for non-classifier outputs
    seconds: float
    required: bool = True  # False: reported for information (onnxruntime-opt), never fails the check

    @property
    def passed(self) -> bool:
        return self.within >= self.min_match

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class CheckReport:
    path: Path
    samples: int
    results: list[EngineResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results if r.required)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "samples": self.samples, "passed": self.passed,
                "results": [r.to_dict() for r in self.results]}


def _compare(engine: str, reference: str, out: np.ndarray, ref: np.ndarray, limits: tuple[float, float, float],
             seconds: float, classifier: bool) -> EngineResult:
    atol, rtol, min_match = limits
    if out.shape != ref.shape:
        raise NoraError(f"{engine} produced outputs of shape {out.shape[1:]}, the reference {ref.shape[1:]}")
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64)).reshape(len(out), -1)
    diff = np.nan_to_num(diff, nan=np.inf)  # a NaN never matches
    scale = float(np.nanmax(np.abs(ref), initial=0.0))
    tolerance = atol + rtol * scale
    within = float(np.mean((diff <= tolerance).all(axis=1)))
    exact = float(np.mean((diff <= atol + FLOAT_RTOL * scale).all(axis=1)))
    agreement = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1))) if classifier else None
    return EngineResult(engine, reference, float(diff.max(initial=0.0)), tolerance, within, min_match, exact,
                        agreement, seconds, engine not in INFORMATIVE)


def check_export(
    path: str | Path,
    model: nn.Module | None = None,
    inputs: torch.Tensor | np.ndarray | None = None,
    *,
    samples: int = 16,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float | None = None,
    min_match: float | None = None,
    flows: tuple[str, ...] = (),
) -> CheckReport:
    """Run ``path`` in every engine that can execute it and compare with ``model`` (eval mode).

    Without ``inputs``, ``samples`` standard-normal inputs of the file's input shape are drawn from
    ``seed``. Without ``model``, the engines are compared with each other (qonnx as reference), or,
    with one engine, the file only has to execute and give finite outputs. ``rtol``/``min_match``
    None pick the float or quantised-graph defaults. Top-1 agreement is reported for models with classes.
    ``flows`` ("hls4ml") adds an FPGA flow's emulation as one more engine (``nora.export.flows``),
    compared like the others; a graph the flow cannot take raises a NoraError naming the node.
    """
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not 0 <= value < float("inf"):
            raise NoraError(f"{name} must be a finite number >= 0, got {value}")
    if min_match is not None and not 0 < min_match <= 1:
        raise NoraError(f"min_match must be in (0, 1], got {min_match}")
    path = Path(path)
    proto = load_onnx(path)
    quantised = is_quantised_graph(proto)
    limits = (atol, rtol if rtol is not None else QUANTISED_RTOL if quantised else FLOAT_RTOL,
              min_match if min_match is not None else QUANTISED_MIN_MATCH if quantised else FLOAT_MIN_MATCH)
    if inputs is None:
        inputs = torch.randn(samples, *input_shape(proto)[1:], generator=SeedTree(seed).child("check", "inputs").generator())
    inputs = torch.as_tensor(inputs, dtype=torch.float32)
    if len(inputs) == 0:
        raise NoraError("no samples to check with")
    for flow in flows:  # before any engine runs: what the flow cannot take is the one line to show
        if flow not in FLOWS:
            raise NoraError(f"unknown flow {flow!r}; choose one of {', '.join(FLOWS)}")
        if is_quantised_graph(proto) and not uses_qonnx_ops(proto):
            raise NoraError(f"{path}: --flow {flow} reads QONNX (Quant nodes), not QCDQ; export with --format qonnx")
        fatal = [p for p in flow_problems(proto, flow) if p.fatal]
        if fatal:
            raise NoraError(f"{path}: {fatal[0].describe(flow)}")
    outputs: dict[str, tuple[np.ndarray, float]] = {}
    for engine in engines_for(proto):
        started = time.perf_counter()
        outputs[engine] = RUNNERS[engine](proto, inputs.numpy(), str(path)), time.perf_counter() - started
    for flow in flows:
        result = run_hls4ml(proto, inputs.numpy(), str(path))
        outputs[flow] = result.outputs, result.convert_seconds + result.compile_seconds + result.predict_seconds
    results = []
    if model is not None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                reference = model(inputs).numpy()
        finally:
            model.train(was_training)
        classifier = getattr(model, "num_classes", None) is not None and reference.ndim == 2
        for engine, (out, seconds) in outputs.items():
            results.append(_compare(engine, "pytorch", out, reference, limits, seconds, classifier))
    else:
        (first, (reference, seconds)), *others = outputs.items()
        finite = reference if np.isfinite(reference).all() else np.full_like(reference, np.nan)
        results.append(_compare(first, "finite", reference, finite, limits, seconds, False))
        for engine, (out, seconds) in others:
            results.append(_compare(engine, first, out, reference, limits, seconds, False))
    return CheckReport(path, len(inputs), results)
