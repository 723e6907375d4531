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


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    path: str | Path,
    *,
    errors: Sequence[float] | None = None,
    ylabel: str = "",
    title: str = "",
    log: bool = True,
) -> Path:
    """Bars with optional error bars (e.g. per-site midpoint noise levels with spread over seeds)."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 4.2))
    ax.bar(range(len(values)), values, yerr=errors, capsize=3, color="tab:blue", alpha=0.85)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return save_figure(fig, path)


def heatmap(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    path: str | Path,
    *,
    row_title: str = "",
    col_title: str = "",
    title: str = "",
    value_format: str = "{:.2f}",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
) -> Path:
    """A matrix of values (accuracy over two noise parameters), annotated cell by cell."""
    fig, ax = plt.subplots(figsize=(0.7 * len(col_labels) + 2.5, 0.5 * len(row_labels) + 2))
    image = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels([f"{c:g}" if isinstance(c, float) else str(c) for c in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels([f"{r:g}" if isinstance(r, float) else str(r) for r in row_labels])
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    ax.set_title(title)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, value_format.format(value), ha="center", va="center", fontsize=7,
                    color="white" if value < (0.5 if vmax is None else (vmin or 0) + 0.5 * (vmax - (vmin or 0))) else "black")
    fig.colorbar(image, ax=ax)
    return save_figure(fig, path)
