"""Uncertainty metrics over per-member probabilities ``[N, M, C]`` (M heads, samples or members).

Pure functions on tensors, so the same code scores clean predictions, OOD sets and every noise
realisation. Ranking metrics (AUROC/AUPR) come from scikit-learn; the rest are short closed forms
tested against scikit-learn and textbook values.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from nora.errors import NoraError

_EPS = 1e-12


def as_member_probs(probs: torch.Tensor) -> torch.Tensor:
    """Accept ``[N, C]`` (one member) or ``[N, M, C]``; return float64 ``[N, M, C]``, checked to sum to 1."""
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if p.ndim == 2:
        p = p[:, None, :]
    if p.ndim != 3 or p.shape[-1] < 2:
        raise NoraError(f"probabilities must be [N, C] or [N, M, C] with C >= 2, got shape {tuple(p.shape)}")
    if bool((p < -1e-6).any()) or not bool(((p.sum(-1) - 1.0).abs() <= 1e-4).all()):
        raise NoraError("probabilities must be non-negative and sum to 1 over the classes (pass softmax outputs)")
    return p.clamp_min(0.0)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last axis."""
    return -(p * p.clamp_min(_EPS).log()).sum(-1)


def decompose(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Total = aleatoric + epistemic: H[mean p] = mean H[p_m] + mutual information, per sample."""
    p = as_member_probs(probs)
    total = entropy(p.mean(1))
    aleatoric = entropy(p).mean(1)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}


def nll(mean_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels under the predictive mean."""
    p = mean_probs.gather(1, labels.view(-1, 1).long()).squeeze(1)
    return float(-(p.clamp_min(_EPS).log()).mean())


def brier(mean_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over samples of sum_c (p_c - [y == c])^2."""
    onehot = torch.nn.functional.one_hot(labels.long(), mean_probs.shape[1]).to(mean_probs.dtype)
    return float(((mean_probs - onehot) ** 2).sum(1).mean())


def reliability(mean_probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Top-label reliability bins (equal width on confidence) and the expected calibration error.

    ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|; a confidence of exactly 1 falls in the last bin.
    """
    if bins < 1:
        raise NoraError(f"ECE needs at least one bin, got {bins}")
    confidence, predicted = mean_probs.max(1)
    correct = (predicted == labels.long()).to(torch.float64)
    index = (confidence * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).to(torch.float64)
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    safe = counts.clamp_min(1)
    n = max(len(labels), 1)
    ece = float(((acc_sum - conf_sum).abs()).sum() / n)
    edges = torch.linspace(0, 1, bins + 1)
    rows = [
        {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(counts[b]),
         "confidence": float(conf_sum[b] / safe[b]) if counts[b] else math.nan,
         "accuracy": float(acc_sum[b] / safe[b]) if counts[b] else math.nan}
        for b in range(bins)
    ]
    return {"ece": ece, "bins": rows}


def classification(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Accuracy, NLL, Brier and ECE of the predictive mean, plus mean entropy parts."""
    p = as_member_probs(probs)
    labels = torch.as_tensor(labels).to("cpu").long()
    if len(labels) != len(p):
        raise NoraError(f"{len(p)} predictions for {len(labels)} labels")
    mean = p.mean(1)
    parts = decompose(p)
    rel = reliability(mean, labels, bins)
    return {
        "n": len(labels),
        "members": p.shape[1],
        "accuracy": float((mean.argmax(1) == labels).double().mean()),
        "nll": nll(mean, labels),
        "brier": brier(mean, labels),
        "ece": rel["ece"],
        **{f"{k}_entropy" if k == "total" else k: float(v.mean()) for k, v in parts.items()},
        "reliability": rel["bins"],
    }


def detection(score_in: torch.Tensor, score_out: torch.Tensor) -> dict[str, float]:
    """AUROC and AUPR (average precision) for telling OOD (positive, higher score) from in-distribution."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in = torch.as_tensor(score_in, dtype=torch.float64).cpu().numpy()
    s_out = torch.as_tensor(score_out, dtype=torch.float64).cpu().numpy()
    if len(s_in) == 0 or len(s_out) == 0:
        raise NoraError("OOD detection needs in-distribution and OOD samples")
    import numpy as np

    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    return {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s))}


def ood(probs_in: torch.Tensor, probs_out: torch.Tensor) -> dict[str, float]:
    """OOD detection from predictive entropy (total) and from mutual information (epistemic, nan for one member)."""
    parts_in, parts_out = decompose(probs_in), decompose(probs_out)
    single = as_member_probs(probs_in).shape[1] == 1
    out: dict[str, float] = {}
    for score, key in (("entropy", "total"), ("mi", "epistemic")):
        for metric, value in detection(parts_in[key], parts_out[key]).items():
            # one member has no mutual information: nan, not a meaningless 0.5
            out[f"{metric}_{score}"] = math.nan if single and score == "mi" else value
    out["ood_total_entropy"] = float(parts_out["total"].mean())
    out["ood_epistemic"] = float(parts_out["epistemic"].mean())
    return out
