"""Score a checkpoint's uncertainty: in-distribution, OOD, data shift, and under hardware noise.

Every condition yields member probabilities ``[N, M, C]`` and goes through ``metrics``. Noisy
conditions take R independent noise realisations; each is scored on its own and the table reports
their mean and standard deviation. Beside the calibration and OOD figures, every noisy condition
asks whether epistemic uncertainty flags the inputs noise breaks: the AUROC of the mutual
information for "correct clean, wrong under this realisation".
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from nora.errors import NoraError
from nora.measure.accuracy import DEFAULT_CHUNK
from nora.models.multihead import member_logits, num_heads, per_head, require_heads, reseed_heads
from nora.uncertainty import metrics
from nora.uncertainty.repulsion_sets import check_shape


@torch.no_grad()
def member_probs(model: nn.Module, x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK, seed: int = 0) -> torch.Tensor:
    """Softmax of every member in eval mode, chunked: ``[N, M, C]`` on the CPU."""
    was = model.training
    model.eval()
    reseed_heads(model, seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        out = [member_logits(model, x[s:s + chunk_size].to(device)).softmax(-1).cpu()
               for s in range(0, len(x), chunk_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def noisy_member_probs(model: nn.Module, inputs: dict[str, torch.Tensor], noise_cfg, sigma: float, repeats: int,
                       seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Per noise realisation r: member probabilities of every input set, from the measurement engine.

    Each input set gets its own ``nora.measure.Engine`` with the same seed, so realisation r of the
    in-distribution and the OOD set come from the same seed-tree node ``seed/eval/repeat/r``, as
    they do for every other nora measurement. MC-dropout masks are reset before every realisation,
    so the realisations differ by the hardware noise alone.
    """
    from nora.measure.engine import Engine
    from nora.train.setup import noise_spec

    spec = noise_spec(noise_cfg, magnitude=sigma)
    outs: dict[str, list[torch.Tensor]] = {}
    for name, x in inputs.items():  # one engine at a time: a model carries one noise handle
        with Engine(model, x, torch.zeros(len(x), dtype=torch.long), spec, seed=seed, repeats=repeats) as engine:
            outs[name] = []
            for r in range(repeats):
                reseed_heads(model, seed)
                with per_head(model):  # the engine returns whatever the model does: [N, M, C] here
                    logits = engine.logits(magnitude=sigma, repeat=r)
                outs[name].append((logits[:, None] if logits.ndim == 2 else logits).softmax(-1).cpu())
    for r in range(repeats):
        yield {name: values[r] for name, values in outs.items()}


def noise_label(noise_cfg) -> str:
    """``additive noise``, plus weight noise and the analog hardware model where the config has them."""
    parts = [f"{noise_cfg.kind} noise"]
    weight = getattr(noise_cfg, "weight", None)
    if weight is not None and weight.sigma > 0:
        parts.append(f"weight {weight.sigma:g}")
    hardware = getattr(noise_cfg, "hardware", None)
    if hardware:
        parts.append(f"analog {hardware.get('preset') or hardware.get('kind') or 'model'}")
    return " + ".join(parts)


def flag_auroc(clean_correct: torch.Tensor, noisy_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of the noisy mutual information for the clean-correct inputs that noise makes wrong."""
    if noisy_probs.shape[1] == 1:
        return float("nan")  # a single member has no mutual information to flag with
    broken = (noisy_probs.mean(1).argmax(1) != labels) & clean_correct
    kept = (~broken) & clean_correct
    if not broken.any() or not kept.any():
        return float("nan")
    mi = metrics.decompose(noisy_probs)["epistemic"]
    return metrics.detection(mi[kept], mi[broken])["auroc"]


def _score(probs_in, labels, probs_out=None, bins=15) -> dict[str, Any]:
    row = metrics.classification(probs_in, labels, bins)
    if probs_out is not None:
        row.update(metrics.ood(probs_in, probs_out))
    return row


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, float):
            values = [r[key] for r in rows if math.isfinite(r[key])]  # flag_auroc is nan when noise broke nothing
            out[key] = statistics.fmean(values) if values else math.nan
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        elif not isinstance(value, (list, dict)):
            out[key] = value
    out["reliability"] = rows[0]["reliability"]
    return out


@dataclasses.dataclass
class UncertaintyReport:
    members: int
    rows: list[dict[str, Any]]


def evaluate_uncertainty(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    ood_x: torch.Tensor | None = None,
    ood_name: str = "ood",
    shifts: Sequence[tuple[str, Sequence[int]]] = (),
    shift_std=None,
    noise_cfg=None,
    sigmas: Sequence[float] = (),
    repeats: int = 5,
    seed: int = 0,
    bins: int = 15,
    progress: Callable[[], None] | None = None,
) -> UncertaintyReport:
    """Rows of metrics: clean, each shift severity, and each noise level (mean/std over realisations)."""
    from nora.uncertainty.shift import shifted

    expected = tuple(getattr(model, "input_shape", x.shape[1:]))
    check_shape("the test set", x.shape[1:], expected)
    if ood_x is not None:
        check_shape(f"OOD set {ood_name!r}", ood_x.shape[1:], expected)
    if repeats < 1:
        raise NoraError(f"repeats must be >= 1, got {repeats}")
    y = y.long()
    clean_in = member_probs(model, x, seed=seed)
    clean_out = member_probs(model, ood_x, seed=seed) if ood_x is not None else None
    rows = [{"kind": "clean", "condition": "clean", "severity": 0, "sigma": 0.0, **_score(clean_in, y, clean_out, bins)}]
    if progress:
        progress()
    for kind, severities in shifts:
        for s in severities:
            probs = member_probs(model, shifted(x, kind, s, std=shift_std, seed=seed), seed=seed)
            rows.append({"kind": "shift", "condition": kind, "severity": s, "sigma": 0.0, **_score(probs, y, None, bins)})
            if progress:
                progress()
    if noise_cfg is not None and sigmas:
        clean_correct = clean_in.mean(1).argmax(1) == y
        inputs = {"in": x} if ood_x is None else {"in": x, "out": ood_x}
        for sigma in sigmas:
            per_repeat = []
            for probs in noisy_member_probs(model, inputs, noise_cfg, sigma, repeats, seed):
                row = _score(probs["in"], y, probs.get("out"), bins)
                row["flag_auroc"] = flag_auroc(clean_correct, probs["in"], y)
                per_repeat.append(row)
                if progress:
                    progress()
            rows.append({"kind": "noise", "condition": noise_label(noise_cfg), "severity": 0, "sigma": float(sigma),
                         "repeats": repeats, **_mean_rows(per_repeat)})
    return UncertaintyReport(num_heads(model), rows)


def per_head_accuracy(model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each member's own test accuracy (a head-specific view: refused for single-head models)."""
    require_heads(model, "per-head accuracy")
    probs = member_probs(model, x)
    return [float((probs[:, m].argmax(1) == y).double().mean()) for m in range(probs.shape[1])]
