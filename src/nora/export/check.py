"""``check_export``: execute an exported file and compare it with the PyTorch model it came from.

Tolerance (decision): an engine passes when ``max |onnx - torch| <= atol + rtol * max |torch|`` over
all samples, with ``atol = rtol = 1e-4`` by default. Float rounding differs between PyTorch and the
ONNX engines (operation order, fused kernels), which gives differences around 1e-6 of the output
scale; a quantised model can in addition land on the other side of a rounding boundary in rare
cases, moving one activation by one quantisation step, which such a bound would flag, so the
report also gives the fraction of samples whose predicted class agrees and how many output values
fall outside the tolerance.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nora.errors import NoraError
from nora.export.execute import RUNNERS, engines_for, input_shape, load_onnx

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class EngineResult:
    engine: str
    reference: str  # what the outputs were compared with: "pytorch" or another engine
    max_abs_diff: float
    tolerance: float
    outside: int  # output values beyond the tolerance
    argmax_agreement: float | None  # None for non-classifier outputs
    seconds: float

    @property
    def passed(self) -> bool:
        return self.outside == 0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}


@dataclasses.dataclass(frozen=True)
class CheckReport:
    path: Path
    samples: int
    results: list[EngineResult]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "samples": self.samples, "passed": self.passed,
                "results": [r.to_dict() for r in self.results]}


def _compare(engine: str, reference: str, out: np.ndarray, ref: np.ndarray, atol: float, rtol: float,
             seconds: float) -> EngineResult:
    if out.shape != ref.shape:
        raise NoraError(f"{engine} produced outputs of shape {out.shape[1:]}, the reference {ref.shape[1:]}")
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    tolerance = atol + rtol * float(np.abs(ref).max(initial=0.0))
    outside = int(np.count_nonzero(~(diff <= tolerance)))  # NaN counts as outside
    agreement = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        agreement = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1)))
    return EngineResult(engine, reference, float(diff.max(initial=0.0)), tolerance, outside, agreement, seconds)


def check_export(
    path: str | Path,
    model: nn.Module | None = None,
    inputs: torch.Tensor | np.ndarray | None = None,
    *,
    samples: int = 16,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> CheckReport:
    """Run ``path`` in every engine that can execute it and compare with ``model`` (eval mode).

    Without ``inputs``, ``samples`` standard-normal inputs of the file's input shape are drawn from
    ``seed``. Without ``model``, the engines are compared with each other (qonnx as reference), or,
    with one engine, the file only has to execute and give finite outputs.
    """
    path = Path(path)
    proto = load_onnx(path)
    if inputs is None:
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(samples, *input_shape(proto)[1:], generator=generator)
    inputs = torch.as_tensor(inputs, dtype=torch.float32)
    if len(inputs) == 0:
        raise NoraError("no samples to check with")
    outputs: dict[str, tuple[np.ndarray, float]] = {}
    for engine in engines_for(proto):
        started = time.perf_counter()
        outputs[engine] = RUNNERS[engine](proto, inputs.numpy(), str(path)), time.perf_counter() - started
    results = []
    if model is not None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                reference = model(inputs).numpy()
        finally:
            model.train(was_training)
        for engine, (out, seconds) in outputs.items():
            results.append(_compare(engine, "pytorch", out, reference, atol, rtol, seconds))
    else:
        (first, (reference, seconds)), *others = outputs.items()
        finite = reference if np.isfinite(reference).all() else np.full_like(reference, np.nan)
        results.append(_compare(first, first, reference, finite, atol, rtol, seconds))
        for engine, (out, seconds) in others:
            results.append(_compare(engine, first, out, reference, atol, rtol, seconds))
    return CheckReport(path, len(inputs), results)
