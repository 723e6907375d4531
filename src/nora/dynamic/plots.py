"""The trajectory plot: sigma(t) above, accuracy(t) with its confidence band below, on one time axis."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

from nora.analysis.plots import plt, save_figure


def trajectory_plot(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    clean: float | None = None,
    chance: float | None = None,
    title: str = "",
    time_unit: str = "",
    curves: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> Path:
    """``rows`` (time, sigma, mean, ci_low, ci_high) of one model, or ``curves`` {label: rows} of several."""
    curves = curves or {"accuracy": rows}
    first = next(iter(curves.values()))
    times = [r["time"] for r in first]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.6]})
    top.plot(times, [r["sigma"] for r in first], color="tab:red", marker="o", ms=3)
    top.set_ylabel("nominal sigma")
    top.grid(True, alpha=0.3)
    top.set_title(title)
    for label, curve in curves.items():
        means = [r["mean"] for r in curve]
        line, = bottom.plot(times, means, marker="o", ms=3, label=label)
        bottom.fill_between(times, [r.get("ci_low", r["mean"]) for r in curve], [r.get("ci_high", r["mean"]) for r in curve],
                            color=line.get_color(), alpha=0.2)
    if clean is not None:
        bottom.axhline(clean, color="green", ls="--", lw=1, label=f"clean {clean:.3f}")
    if chance is not None:
        bottom.axhline(chance, color="grey", ls=":", lw=1, label=f"chance {chance:.2f}")
    if len(times) > 1 and times[0] > 0 and times[-1] / times[0] >= 100:
        bottom.set_xscale("log")
    bottom.set_xlabel(f"time ({time_unit})" if time_unit else "time")
    bottom.set_ylabel("test accuracy")
    bottom.set_ylim(0, 1.02)
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend(fontsize=8)
    return save_figure(fig, path)
