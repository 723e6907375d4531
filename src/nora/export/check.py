"""``check_export``: execute an exported file and compare it with the PyTorch model it came from.

Tolerance (decision): a sample matches when every output value satisfies
``|onnx - torch| <= atol + rtol * max |torch|`` (``atol = rtol = 1e-4``; the maximum runs over all
samples), and an engine passes when at least ``min_match`` (99%) of the samples match. Float graphs
differ from PyTorch by float rounding only (about 1e-6 of the output scale), so all their samples
match. In a quantised graph that last-bit difference can, rarely, put a value on the other side of
a rounding boundary, which moves one activation by a whole quantisation step and that sample's
outputs by much more than the tolerance (measured: 0.4% of MNIST test samples for a LeNet-5 with
8-bit activations in steps of 1/64); hence a share of samples rather than all of them. The report
also gives the largest difference and the top-1 agreement.
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
DEFAULT_MIN_MATCH = 0.99


@dataclasses.dataclass(frozen=True)
class EngineResult:
    engine: str
    reference: str  # what the outputs were compared with: "pytorch", another engine, or "finite" (itself)
    max_abs_diff: float
    tolerance: float
    matched: float  # share of samples whose outputs are all within the tolerance
    min_match: float
    argmax_agreement: float | None  # None for non-classifier outputs
    seconds: float

    @property
    def passed(self) -> bool:
        return self.matched >= self.min_match

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


def _compare(engine: str, reference: str, out: np.ndarray, ref: np.ndarray, limits: tuple[float, float, float],
             seconds: float, classifier: bool) -> EngineResult:
    atol, rtol, min_match = limits
    if out.shape != ref.shape:
        raise NoraError(f"{engine} produced outputs of shape {out.shape[1:]}, the reference {ref.shape[1:]}")
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64)).reshape(len(out), -1)
    tolerance = atol + rtol * float(np.nanmax(np.abs(ref), initial=0.0))
    matched = float(np.mean((diff <= tolerance).all(axis=1)))  # NaN never matches
    agreement = None
    if classifier:
        agreement = float(np.mean(out.argmax(axis=1) == ref.argmax(axis=1)))
    largest = float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
    return EngineResult(engine, reference, largest, tolerance, matched, min_match, agreement, seconds)


def check_export(
    path: str | Path,
    model: nn.Module | None = None,
    inputs: torch.Tensor | np.ndarray | None = None,
    *,
    samples: int = 16,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    min_match: float = DEFAULT_MIN_MATCH,
) -> CheckReport:
    """Run ``path`` in every engine that can execute it and compare with ``model`` (eval mode).

    Without ``inputs``, ``samples`` standard-normal inputs of the file's input shape are drawn from
    ``seed``. Without ``model``, the engines are compared with each other (qonnx as reference), or,
    with one engine, the file only has to execute and give finite outputs. Top-1 agreement is
    reported for models with classes.
    """
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not 0 <= value < float("inf"):
            raise NoraError(f"{name} must be a finite number >= 0, got {value}")
    if not 0 < min_match <= 1:
        raise NoraError(f"min_match must be in (0, 1], got {min_match}")
    limits = (atol, rtol, min_match)
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
            classifier = getattr(model, "num_classes", None) is not None and reference.ndim == 2
            results.append(_compare(engine, "pytorch", out, reference, limits, seconds, classifier))
    else:
        (first, (reference, seconds)), *others = outputs.items()
        finite = reference if np.isfinite(reference).all() else np.full_like(reference, np.nan)
        results.append(_compare(first, "finite", reference, finite, limits, seconds, False))
        for engine, (out, seconds) in others:
            results.append(_compare(engine, first, out, reference, limits, seconds, False))
    return CheckReport(path, len(inputs), results)
