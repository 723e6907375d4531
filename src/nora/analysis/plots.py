"""Plots a person would rather look at than read; each is saved as PNG beside its raw numbers.

Drawn on ``matplotlib.figure.Figure`` with an Agg canvas and no pyplot, so importing this sets no
global backend or state. Rules every plot keeps, because a reader trusts what is drawn: every item is
drawn (a midpoint outside the measured range is marked at its bound, not left out), log axes read as
plain decimals (0.01, 0.1, 1, 10), error bars and bands appear only where there are repeats to make
them, and every curve has its own colour and marker. Each ``*_figure`` function returns the figure
(for tests and callers that want to inspect it); the plain function saves it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from nora.io import atomic_write_bytes

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", "*", ">", "h", "p", "d", "H", "8")
ABOVE = "above_range"
BELOW = "below_range"


def new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save atomically as PNG (and SVG when the suffix says so)."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=130, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def styles(n: int) -> list[tuple[Any, str]]:
    """(colour, marker) for ``n`` curves: all colours distinct, and markers distinct among neighbours.

    Up to ten curves take the tab10 colours; more take evenly spaced colours of a perceptual map, so
    no two curves share a colour, and the cycling markers tell close colours apart.
    """
    from matplotlib import colormaps

    if n <= 10:
        colours = [colormaps["tab10"](i) for i in range(n)]
    else:
        colours = [colormaps["turbo"](0.05 + 0.9 * i / (n - 1)) for i in range(n)]
    return [(colours[i], MARKERS[i % len(MARKERS)]) for i in range(n)]


def plain_number(value: float) -> str:
    """0.01, 0.3, 1, 20, 1000: decimals without exponents, up to six significant digits."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return np.format_float_positional(float(f"{value:.6g}"), trim="-")


def plain_log_axis(axis, low: float, high: float) -> None:
    """Decade ticks labelled as plain decimals; on a short axis labelled in-between ticks too
    (2, 3 and 5 with fewer than three decade ticks in range, every digit within one decade).

    matplotlib's default labels the in-between ticks of a short log axis as "6x10^0".
    """
    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    valid = low > 0 and high > 0
    span = math.log10(high / low) if valid else math.inf
    decade_ticks = math.floor(math.log10(high) + 1e-9) - math.ceil(math.log10(low) - 1e-9) + 1 if valid else 3
    if decade_ticks < 3:
        decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
        subs = range(2, 10) if span < 1 else (2, 3, 5)
        axis.set_minor_locator(FixedLocator([m * 10.0**e for e in decades for m in subs]))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: plain_number(v)))
    else:
        axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
        axis.set_minor_formatter(NullFormatter())


def interval(row: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) of a row's interval, or None without repeats (n = 1, no or a point-sized interval)."""
    low, high = row.get("ci_low"), row.get("ci_high")
    if (row.get("n") or 2) < 2 or low is None or high is None or not high > low:
        return None
    return float(low), float(high)


def _has_spread(rows: Sequence[dict[str, Any]]) -> bool:
    """Error bars only from repeats: some row needs an interval wider than a point."""
    return any(interval(r) is not None for r in rows)


def accuracy_vs_sigma_figure(
    curves: dict[str, Sequence[dict[str, Any]]],
    *,
    clean: float | None = None,
    chance: float | None = None,
    title: str = "",
    xlabel: str = "sigma",
) -> Figure:
    fig = new_figure((6.4 if len(curves) <= 12 else 7.6, 4.2))
    ax = fig.subplots()
    for (label, rows), (colour, marker) in zip(curves.items(), styles(len(curves))):
        xs = [r["sigma"] for r in rows]
        ys = [r["mean"] for r in rows]
        if _has_spread(rows):
            spans = [interval(r) or (r["mean"], r["mean"]) for r in rows]
            lo = [r["mean"] - low for r, (low, _) in zip(rows, spans)]
            hi = [high - r["mean"] for r, (_, high) in zip(rows, spans)]
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colour, marker=marker, ms=4, capsize=2, label=label)
        else:
            ax.plot(xs, ys, color=colour, marker=marker, ms=4, label=label)
    if clean is not None:
        ax.axhline(clean, color="green", ls="--", lw=1, label=f"clean {clean:.3f}")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance {chance:.2f}")
    ax.set_xscale("log")
    sigmas = [r["sigma"] for rows in curves.values() for r in rows if r["sigma"] > 0]
    if sigmas:
        plain_log_axis(ax.xaxis, min(sigmas), max(sigmas))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    if len(curves) > 12:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 + len(curves) // 25)
    else:
        ax.legend(fontsize=8)
    return fig


def accuracy_vs_sigma(curves: dict[str, Sequence[dict[str, Any]]], path: str | Path, **kwargs: Any) -> Path:
    """One line per curve (rows with sigma, mean, ci_low, ci_high, n), log-x, clean and chance marked."""
    return save_figure(accuracy_vs_sigma_figure(curves, **kwargs), path)


def training_curves(metrics: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    fig = new_figure((6.4, 4.0))
    ax1 = fig.subplots()
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


def _status(value: Any) -> str | None:
    """One status from a string or a list of statuses (mixed directions give none)."""
    if isinstance(value, str):
        return value
    found = {s for s in (value or ()) if s in (ABOVE, BELOW)}
    return found.pop() if len(found) == 1 else None


def bars_figure(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    errors: Sequence[float | None] | None = None,
    statuses: Sequence[Any] | None = None,
    ranges: Sequence[tuple[float, float] | None] | None = None,
    ylabel: str = "",
    title: str = "",
    log: bool = True,
) -> Figure:
    """Every label gets a bar or a mark: a missing value with status ``above_range``/``below_range``
    is a hatched bar up to the range end it lies beyond, topped by a triangle and "> hi" / "< lo";
    without a known range the triangle sits on the axis edge; anything else is an "x" labelled
    "no mu". Error bars only where an error is given and > 0 (spread over several runs)."""
    n = len(labels)
    fig = new_figure((max(6.0, 0.45 * n + 2), 4.2))
    ax = fig.subplots()
    statuses = list(statuses) if statuses is not None else [None] * n
    ranges = list(ranges) if ranges is not None else [None] * n
    errors = list(errors) if errors is not None else [None] * n
    found = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v) and (v > 0 or not log)]
    ax.bar([i for i, _ in found], [v for _, v in found], color="tab:blue", alpha=0.85)
    spread = [(i, v, errors[i]) for i, v in found if errors[i] is not None and errors[i] > 0]
    if spread:
        ax.errorbar([i for i, _, _ in spread], [v for _, v, _ in spread], yerr=[e for _, _, e in spread],
                    fmt="none", ecolor="black", capsize=3)
    if log:
        ax.set_yscale("log")
    # Limits from everything that will be drawn, so the bounds of out-of-range marks are in view.
    heights = [v for _, v in found] + [b for r in ranges if r for b in r if b and b > 0]
    if heights:
        low, high = min(heights), max(heights)
        if log:
            ax.set_ylim(low / 3, high * 4)
            plain_log_axis(ax.yaxis, low / 3, high * 4)
        else:
            ax.set_ylim(min(0.0, low), high * 1.25)
    edge = ax.get_xaxis_transform()  # x in data, y in axes units
    drawn = {i for i, _ in found}
    for i, (status, span) in enumerate(zip(statuses, ranges)):
        if i in drawn:
            continue
        status = _status(status)
        if status in (ABOVE, BELOW) and span is not None:
            bound = span[1] if status == ABOVE else span[0]
            ax.bar([i], [bound], color="none", edgecolor="tab:orange", hatch="//", lw=1)
            ax.plot([i], [bound], marker="^" if status == ABOVE else "v", color="tab:orange", ms=9, ls="none",
                    label="_out_of_range")
            ax.annotate(f"{'>' if status == ABOVE else '<'} {plain_number(bound)}", (i, bound),
                        textcoords="offset points", xytext=(0, 8 if status == ABOVE else -14), ha="center",
                        fontsize=7, color="tab:orange")
        elif status in (ABOVE, BELOW):
            y = 1.0 if status == ABOVE else 0.0
            ax.plot([i], [y], transform=edge, marker="^" if status == ABOVE else "v", color="tab:orange", ms=9,
                    ls="none", clip_on=False, label="_out_of_range")
            ax.annotate("above range" if status == ABOVE else "below range", (i, y), xycoords=edge,
                        textcoords="offset points", xytext=(0, -14 if status == ABOVE else 8), ha="center",
                        fontsize=7, color="tab:orange")
        else:
            ax.plot([i], [0.02], transform=edge, marker="x", color="tab:red", ms=8, ls="none", label="_no_value")
            ax.annotate("no mu", (i, 0.02), xycoords=edge, textcoords="offset points", xytext=(0, 8), ha="center",
                        fontsize=7, color="tab:red")
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    return fig


def bars(labels: Sequence[str], values: Sequence[float | None], path: str | Path, **kwargs: Any) -> Path:
    """Bars per label (e.g. per-site midpoint noise levels); see ``bars_figure`` for the marks."""
    return save_figure(bars_figure(labels, values, **kwargs), path)


def heatmap_figure(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[Any],
    col_labels: Sequence[Any],
    *,
    row_title: str = "",
    col_title: str = "",
    title: str = "",
    value_format: str = "{:.2f}",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
) -> Figure:
    fig = new_figure((0.7 * len(col_labels) + 2.5, 0.5 * len(row_labels) + 2))
    ax = fig.subplots()
    data = np.ma.masked_invalid(np.asarray(matrix, dtype=float))
    image = ax.imshow(data, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    ax.set_xticks(range(len(col_labels)))
    ax.set_xticklabels([plain_number(c) if isinstance(c, float) else str(c) for c in col_labels], rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels([plain_number(r) if isinstance(r, float) else str(r) for r in row_labels])
    ax.set_xlabel(col_title)
    ax.set_ylabel(row_title)
    ax.set_title(title)
    middle = 0.5 if vmax is None else (vmin or 0) + 0.5 * (vmax - (vmin or 0))
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            missing = value is None or not math.isfinite(value)
            ax.text(j, i, "-" if missing else value_format.format(value), ha="center", va="center", fontsize=7,
                    color="black" if missing or value >= middle else "white")
    fig.colorbar(image, ax=ax)
    return fig


def heatmap(matrix: Sequence[Sequence[float]], row_labels: Sequence[Any], col_labels: Sequence[Any],
            path: str | Path, **kwargs: Any) -> Path:
    """A matrix of values (accuracy over two noise parameters), annotated cell by cell; gaps read "-"."""
    return save_figure(heatmap_figure(matrix, row_labels, col_labels, **kwargs), path)
