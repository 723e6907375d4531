"""Plots a reader can trust: every site drawn, plain log ticks, error bars only from repeats, distinct styles."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from matplotlib.colors import to_hex

from nora.analysis import plots
from nora.dynamic.plots import trajectory_figure, trajectory_plot


def _rows(sigmas, n):
    """Rows as ``nora.stats.summarize`` gives them: one repeat has no std or interval (None)."""
    return [{"sigma": s, "mean": 0.9 - 0.1 * i, "std": 0.02 if n > 1 else None,
             "ci_low": 0.9 - 0.1 * i - 0.03 if n > 1 else None, "ci_high": 0.9 - 0.1 * i + 0.03 if n > 1 else None,
             "n": n} for i, s in enumerate(sigmas)]


def _visible_labels(axis, minor=False):
    """Texts of the drawn tick labels inside the view limits."""
    axis.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    locs = axis.get_minorticklocs() if minor else axis.get_majorticklocs()
    return [t.label1.get_text() for t, loc in zip(ticks, locs) if low <= loc <= high and t.label1.get_text()]


def test_log_ticks_are_plain_decimals_over_wide_and_narrow_ranges():
    fig = plots.accuracy_vs_sigma_figure({"a": _rows([0.01, 0.1, 1, 10, 100], 3)})
    labels = _visible_labels(fig.axes[0].xaxis)
    assert labels == ["0.01", "0.1", "1", "10", "100"]
    assert _visible_labels(fig.axes[0].xaxis, minor=True) == []

    # Under one decade: matplotlib's default labels these "3x10^0"; here they read 3, 4, ... 8.
    fig = plots.accuracy_vs_sigma_figure({"a": _rows([3, 4, 5, 6, 8], 3)})
    labels = _visible_labels(fig.axes[0].xaxis) + _visible_labels(fig.axes[0].xaxis, minor=True)
    assert labels == ["3", "4", "5", "6", "7", "8"]
    fig = plots.accuracy_vs_sigma_figure({"a": _rows([0.3, 1, 3, 10], 3)})  # two decade ticks: 2, 3, 5 as well
    labels = _visible_labels(fig.axes[0].xaxis) + _visible_labels(fig.axes[0].xaxis, minor=True)
    assert set(labels) == {"1", "10", "0.3", "0.5", "2", "3", "5"}
    for text in labels:
        assert "$" not in text and "times" not in text and "^" not in text and "e" not in text
        float(text)


def test_plain_number():
    assert [plots.plain_number(v) for v in (0.01, 0.1, 1.0, 10.0, 1000.0, 0.3, 2e-5, 0.1 + 0.2)] == [
        "0.01", "0.1", "1", "10", "1000", "0.3", "0.00002", "0.3"]


def test_error_bars_only_with_repeats():
    point = [{**r, "std": 0.0, "ci_low": r["mean"], "ci_high": r["mean"]} for r in _rows([0.1, 1, 10], 1)]
    fig = plots.accuracy_vs_sigma_figure({"one run": _rows([0.1, 1, 10], 1), "five": _rows([0.1, 1, 10], 5),
                                          "point-sized": point}, clean=0.9, chance=0.1)
    ax = fig.axes[0]
    assert len(ax.containers) == 1  # one ErrorbarContainer: the curve with repeats
    assert ax.containers[0].get_label() == "five"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["chance 0.10", "clean 0.900", "five", "one run", "point-sized"]


def test_every_curve_has_its_own_colour_and_marker_beyond_ten():
    curves = {f"{i} site": _rows([0.1, 1, 10], 3) for i in range(23)}
    fig = plots.accuracy_vs_sigma_figure(curves)
    lines = [c.lines[0] for c in fig.axes[0].containers if c.get_label() in curves]  # error-bar data lines
    assert len(lines) == 23
    colours = {to_hex(line.get_color()) for line in lines}
    styles = {(to_hex(line.get_color()), line.get_marker()) for line in lines}
    assert len(colours) == 23 and len(styles) == 23
    markers = [line.get_marker() for line in lines]
    assert all(a != b for a, b in zip(markers, markers[1:]))
    assert len(plots.styles(5)) == 5 and len({c for c, _ in plots.styles(40)}) == 40


def _marks(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def test_bars_draw_every_site_and_mark_out_of_range(tmp_path):
    labels = ["0 input", "1 conv", "2 relu", "3 fc", "4 out"]
    values = [0.5, None, 2.0, None, None]
    statuses = ["fit", "above_range", "interpolated", ["below_range"], ["no_drop"]]
    ranges = [None, (0.01, 30.0), None, (0.05, 10.0), None]
    fig = plots.bars_figure(labels, values, statuses=statuses, ranges=ranges, errors=[0.1, None, 0.0, None, None])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    up = _marks(ax, "_out_of_range")
    assert sorted(m.get_marker() for m in up) == ["^", "v"]
    texts = [t.get_text() for t in ax.texts]
    assert "> 30" in texts and "< 0.05" in texts and "no mu" in texts
    assert len(_marks(ax, "_no_value")) == 1
    low, high = ax.get_ylim()
    assert low < 0.05 and high > 30  # the bounds are in view, not cut off
    # Error bar only for the bar with a spread (0.0 = a single run: no bar).
    bars = [c for c in ax.containers if c.__class__.__name__ == "BarContainer"]
    assert [len(c) for c in bars] == [2, 1, 1]  # the found values, then one hatched bar per bound
    assert all(c[0].get_hatch() == "//" for c in bars[1:])
    errorbar = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(errorbar) == 1 and len(errorbar[0].lines[2][0].get_segments()) == 1
    assert plots.bars(labels, values, tmp_path / "mu.png", statuses=statuses, ranges=ranges).read_bytes()[:4] == b"\x89PNG"


def test_bars_without_known_range_mark_the_axis_edge():
    fig = plots.bars_figure(["a", "b"], [1.0, None], statuses=["fit", "above_range"])
    ax = fig.axes[0]
    (mark,) = _marks(ax, "_out_of_range")
    assert mark.get_marker() == "^" and list(mark.get_ydata()) == [1.0]  # axes units: the top edge
    assert "above range" in [t.get_text() for t in ax.texts]


def test_heatmap_shows_gaps_as_dash(tmp_path):
    fig = plots.heatmap_figure([[0.5, float("nan")], [0.2, 0.9]], [0.1, 0.3], [1.0, 20.0])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.50", "-", "0.20", "0.90"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "20"]
    path = plots.heatmap([[0.5, 0.1]], [1], [1.0, 2.0], tmp_path / "h.svg")
    assert path.read_text().lstrip().startswith("<?xml")


def test_trajectory_band_only_with_repeats_and_plain_log_time(tmp_path):
    times = [1, 10, 100, 1000]
    one = [{"time": t, "sigma": 0.1 * (i + 1), "mean": 0.8, "ci_low": None, "ci_high": None, "n": 1} for i, t in enumerate(times)]
    many = [{**r, "ci_low": 0.75, "ci_high": 0.85, "n": 8} for r in one]
    fig = trajectory_figure(one, curves={"single": one, "repeated": many})
    bottom = fig.axes[1]
    assert len(bottom.collections) == 1  # one band: the repeated curve
    assert _visible_labels(bottom.xaxis) == ["1", "10", "100", "1000"]
    assert trajectory_plot(one, tmp_path / "t.png").stat().st_size > 0


def test_importing_plots_sets_no_global_matplotlib_state():
    code = ("import matplotlib, sys; before = matplotlib.get_backend(); import nora.analysis.plots, nora.dynamic.plots;"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported';"
            "assert matplotlib.get_backend() == before, 'backend changed'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "svg"})
    assert result.returncode == 0, result.stderr[-500:]


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_saved_files_follow_umask(tmp_path, suffix):
    old = os.umask(0o022)
    try:
        path = plots.accuracy_vs_sigma({"a": _rows([0.1, 1], 1)}, tmp_path / f"c.{suffix}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
