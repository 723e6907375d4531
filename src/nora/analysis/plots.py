"""Plots a person would rather look at than read; each is saved as PNG beside its raw numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nora.io import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """Save atomically as PNG (and SVG when the suffix says so)."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def accuracy_vs_sigma(
    curves: dict[str, Sequence[dict[str, Any]]],
    path: str | Path,
    *,
    clean: float | None = None,
    chance: float | None = None,
    title: str = "",
    xlabel: str = "sigma",
) -> Path:
    """One line per curve (rows with sigma, mean, ci_low, ci_high), log-x, clean and chance marked."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, rows in curves.items():
        xs = [r["sigma"] for r in rows]
        ys = [r["mean"] for r in rows]
        lo = [r["mean"] - r.get("ci_low", r["mean"]) for r in rows]
        hi = [r.get("ci_high", r["mean"]) - r["mean"] for r in rows]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=3, capsize=2, label=label)
    if clean is not None:
        ax.axhline(clean, color="green", ls="--", lw=1, label=f"clean {clean:.3f}")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance {chance:.2f}")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def training_curves(metrics: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    fig, ax1 = plt.subplots(figsize=(6.4, 4.0))
    epochs = [m["epoch"] for m in metrics]
    ax1.plot(epochs, [m["train_loss"] for m in metrics], color="tab:red", marker="o", ms=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [m["test_accuracy"] for m in metrics], color="tab:blue", marker="s", ms=3)
    ax2.set_ylabel("test accuracy", color="tab:blue")
    ax1.set_title(title)
    ax1.grid(True, alpha=0.3)
    return save_figure(fig, path)
