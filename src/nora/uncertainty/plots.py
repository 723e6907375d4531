"""Reliability diagrams and metric-vs-condition plots (PNG beside the JSON/CSV they draw)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from nora.analysis.plots import new_figure, save_figure


def reliability_diagram(bins: Sequence[dict[str, Any]], ece: float, path: str | Path, title: str = "") -> Path:
    """Accuracy per confidence bin (bars) and the bin's mean confidence (markers) against the diagonal."""
    fig = new_figure((5, 5.6))
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = [(b["low"] + b["high"]) / 2 for b in bins]
    width = bins[0]["high"] - bins[0]["low"]
    acc = [0.0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in bins]
    conf = [0.0 if math.isnan(b["confidence"]) else b["confidence"] for b in bins]
    ax.bar(centers, acc, width=width, edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    filled = [(c, v) for c, v, b in zip(centers, conf, bins) if b["count"]]
    if filled:
        ax.plot(*zip(*filled), "D", color="tab:red", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title + ': ' if title else ''}ECE {ece:.4f}")
    ax.legend(loc="upper left")
    ax_count.bar(centers, [b["count"] for b in bins], width=width, color="grey")
    ax_count.set_yscale("symlog")
    ax_count.set_xlabel("confidence")
    ax_count.set_ylabel("samples")
    return save_figure(fig, path)


def metrics_over(rows: Sequence[dict[str, Any]], x_key: str, path: str | Path, title: str = "") -> Path:
    """Accuracy/ECE, and the uncertainty parts (and OOD AUROC where measured), against sigma or severity."""
    xs = [r[x_key] for r in rows]
    fig = new_figure((10, 3.8))
    left, right = fig.subplots(1, 2)
    for key in ("accuracy", "ece", "auroc_mi", "auroc_entropy", "flag_auroc"):
        if all(key in r for r in rows[1:]) and key in rows[-1]:
            pts = [(x, r[key]) for x, r in zip(xs, rows) if key in r]
            left.plot(*zip(*pts), "o-", label=key)
    for key in ("total_entropy", "aleatoric", "epistemic", "ood_epistemic"):
        if key in rows[-1]:
            pts = [(x, r[key]) for x, r in zip(xs, rows) if key in r]
            right.plot(*zip(*pts), "o-", label=key)
    for ax in (left, right):
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title(title or "accuracy, calibration, detection")
    right.set_title("uncertainty (nats)")
    return save_figure(fig, path)
