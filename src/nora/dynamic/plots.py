"""The trajectory plot: sigma(t) above, accuracy(t) with its confidence band below, on one time axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from nora.analysis.plots import interval, new_figure, plain_log_axis, save_figure, styles


def trajectory_figure(
    rows: Sequence[dict[str, Any]],
    *,
    clean: float | None = None,
    chance: float | None = None,
    title: str = "",
    time_unit: str = "",
    curves: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> Figure:
    curves = curves or {"accuracy": rows}
    first = next(iter(curves.values()))
    times = [r["time"] for r in first]
    fig = new_figure((6.4, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.6]})
    top.plot(times, [r["sigma"] for r in first], color="tab:red", marker="o", ms=3)
    top.set_ylabel("nominal sigma")
    top.grid(True, alpha=0.3)
    top.set_title(title)
    for (label, curve), (colour, marker) in zip(curves.items(), styles(len(curves))):
        means = [r["mean"] for r in curve]
        bottom.plot(times, means, color=colour, marker=marker, ms=3, label=label)
        # A band only from repeats: with one draw per time point there is no interval to show.
        spans = [interval(r) or (r["mean"], r["mean"]) for r in curve]
        if any(interval(r) is not None for r in curve):
            bottom.fill_between(times, [low for low, _ in spans], [high for _, high in spans], color=colour, alpha=0.2)
    if clean is not None:
        bottom.axhline(clean, color="green", ls="--", lw=1, label=f"clean {clean:.3f}")
    if chance is not None:
        bottom.axhline(chance, color="grey", ls=":", lw=1, label=f"chance {chance:.2f}")
    if len(times) > 1 and times[0] > 0 and times[-1] / times[0] >= 100:
        bottom.set_xscale("log")
        plain_log_axis(bottom.xaxis, times[0], times[-1])
    bottom.set_xlabel(f"time ({time_unit})" if time_unit else "time")
    bottom.set_ylabel("test accuracy")
    bottom.set_ylim(0, 1.02)
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend(fontsize=8)
    return fig


def trajectory_plot(rows: Sequence[dict[str, Any]], path: str | Path, **kwargs: Any) -> Path:
    """``rows`` (time, sigma, mean, ci_low, ci_high, n) of one model, or ``curves`` {label: rows} of several."""
    return save_figure(trajectory_figure(rows, **kwargs), path)
