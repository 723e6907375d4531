"""Roofline and bandwidth-sweep plots (PNG; the numbers are written beside them as CSV/JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nora.io import atomic_write_bytes
from nora.perf.roofline import LayerPoint, Roofline


def new_axes(size: tuple[float, float]):
    """A figure without pyplot, so no global backend is chosen."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot()


def save_png(fig, path: str | Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def roofline_plot(roof: Roofline, points: Sequence[LayerPoint], path: str | Path, title: str = "") -> Path:
    """Log-log roofline (one core): a bandwidth roof per level, the compute roof, one marker per layer/kernel."""
    import numpy as np

    fig, ax = new_axes((7.2, 4.8))
    lo = min([p.intensity for p in points] + [0.05]) / 2
    hi = max([p.intensity for p in points] + [50.0]) * 2
    xs = np.geomspace(lo, hi, 200)
    for level, bandwidth in roof.bandwidth.items():
        ax.plot(xs, np.minimum(xs * bandwidth, roof.peak_core), lw=1, label=f"{level} {bandwidth / 1e9:.0f} GB/s")
    ax.axhline(roof.peak_core, color="k", ls="--", lw=1, label=f"peak 1 core {roof.peak_core / 1e9:.0f} GFLOP/s")
    if roof.peak_int8_core > 0:
        ax.axhline(roof.peak_int8_core, color="tab:purple", ls="-.", lw=1,
                   label=f"int8 peak 1 core {roof.peak_int8_core / 1e9:.0f} Gop/s")
    ax.axhline(roof.peak_all, color="grey", ls=":", lw=1,
               label=f"peak {roof.threads} threads {roof.peak_all / 1e9:.0f} GFLOP/s")
    markers = {"fp32": "o", "int8": "s", "bitserial": "^", "estimated": "x"}
    for kernel in sorted({p.kernel for p in points}):
        chosen = [p for p in points if p.kernel == kernel]
        ax.scatter([p.intensity for p in chosen], [max(p.achieved, 1.0) for p in chosen],
                   marker=markers.get(kernel, "d"), label=f"layers, {kernel}", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP or op / byte)")
    ax.set_ylabel("achieved FLOP/s (ops/s for integer kernels)")
    ax.set_title(title or "roofline of this host")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    return save_png(fig, path)


def bandwidth_plot(roof: Roofline, path: str | Path) -> Path:
    fig, ax = new_axes((6.4, 4.0))
    ax.plot([r["bytes"] for r in roof.sweep], [r["bandwidth"] / 1e9 for r in roof.sweep], marker="o")
    for name, size in roof.levels:
        ax.axvline(size, color="grey", ls=":", lw=1)
        ax.text(size, ax.get_ylim()[1] * 0.95, name, fontsize=8, ha="right")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("working set (bytes)")
    ax.set_ylabel("read bandwidth, one thread (GB/s)")
    ax.set_title("working-set sweep")
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)
