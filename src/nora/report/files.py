"""Result files: the raw numbers (JSON, CSV) and the plots (PNG, SVG) of every analysis.

Only data a workflow hands over is written here; nothing is measured or recomputed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

from nora.analysis import plots
from nora.analysis.curves import Curve
from nora.analysis.midpoint import aggregate
from nora.analysis.walk import WalkResult
from nora.io import atomic_write_json, atomic_write_text
from nora.stats import summarize
from nora.tables import rows_to_csv, write_table

CURVE_FILE = "curve.json"
WALK_FILE = "walk.json"
FORMATS = ("png", "svg")


def save_plot(draw: Callable[..., Path], stem: Path, *args: Any, **kwargs: Any) -> list[Path]:
    """Draw one plot as PNG and SVG (``draw`` is a ``nora.analysis.plots`` function)."""
    return [draw(*args, stem.with_suffix(f".{fmt}"), **kwargs) for fmt in FORMATS]


def fmt_mu(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if spread is None or not math.isfinite(spread) else f"{value:.3g} ± {spread:.2g}"


# ------------------------------------------------------------------------------ curves
def write_curves(out_dir: Path, curves: Sequence[Curve], meta: dict[str, Any], *,
                 heatmap: dict[str, Any] | None = None, title: str = "") -> list[Path]:
    """curve.json/.csv and the accuracy-vs-sigma plot (and a heat map for combined noise)."""
    out_dir = Path(out_dir)
    flat = [{"label": c.label, **{k: v for k, v in r.items() if k != "values"}} for c in curves for r in c.rows]
    atomic_write_json(out_dir / CURVE_FILE, {"kind": "curve", **meta, "curves": [c.to_dict() for c in curves],
                                              "heatmap": heatmap})
    atomic_write_text(out_dir / "curve.csv", rows_to_csv(flat))
    written = save_plot(plots.accuracy_vs_sigma, out_dir / "curve", {c.label: c.rows for c in curves},
                        clean=curves[0].clean, chance=curves[0].chance, title=title,
                        xlabel=meta.get("xlabel", "sigma"))
    if heatmap is not None:
        atomic_write_text(out_dir / "heatmap.csv", rows_to_csv([cell for row in heatmap["cells"] for cell in row]))
        written += save_plot(plots.heatmap, out_dir / "heatmap", [[c["mean"] for c in row] for row in heatmap["cells"]],
                             heatmap["row_labels"], heatmap["col_labels"], row_title=heatmap["row_title"],
                             col_title=heatmap["col_title"], title=heatmap.get("title", ""))
    return written


def curve_table(curves: Sequence[Curve]) -> tuple[list[str], list[list[Any]]]:
    columns = ["curve", "sigma", "mean acc", "std", "CI low", "CI high"]
    rows = [[c.label, r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]] for c in curves for r in c.rows]
    return columns, rows


def midpoint_table(curves: Sequence[Curve]) -> tuple[list[str], list[list[Any]]]:
    return ["curve", "mu", "status", "note"], [[c.label, fmt_mu(c.midpoint.mu), c.midpoint.status, c.midpoint.message]
                                               for c in curves]


# ------------------------------------------------------------------------------ walks
def walk_summary(runs: Sequence[WalkResult]) -> list[dict[str, Any]]:
    """Per site: mu aggregated over runs (seeds, checkpoints) and the paths used."""
    rows = []
    for position, first in enumerate(runs[0].sites):
        per_run = [run.sites[position] for run in runs]
        agg = aggregate([s.midpoint for s in per_run])
        rows.append({"index": first.site.index, "name": first.site.name, "type": first.site.module_type,
                     "path": first.path, "evaluations": sum(len(s.measurements) for s in per_run) / len(per_run),
                     **{k: v for k, v in agg.items() if k != "values"},
                     "mu_values": agg.get("values", []),
                     "messages": sorted({s.midpoint.message for s in per_run if s.midpoint.message})})
    return rows


def walk_table(summary: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    columns = ["index", "name", "type", "path", "mu (mean ± std)", "found", "status"]
    rows = [[r["index"], r["name"], r["type"], r["path"],
             fmt_mu(r["mu_mean"], r.get("mu_std") if r["n_found"] > 1 else None),
             f"{r['n_found']}/{r['n']}", ", ".join(r["statuses"])] for r in summary]
    return columns, rows


def _pooled_rows(site_runs) -> list[dict[str, Any]]:
    """One curve per site from several runs: per-repeat values pooled at every sigma measured."""
    by_sigma: dict[float, list[float]] = {}
    for site in site_runs:
        for m in site.measurements:
            by_sigma.setdefault(m.sigma, []).extend(m.values)
    return [{"sigma": s, **summarize(v)} for s, v in sorted(by_sigma.items())]


def write_walk(out_dir: Path, runs: Sequence[WalkResult], meta: dict[str, Any], *, title: str = "") -> list[dict]:
    """walk.json (every run), walk.csv (per-site mu), walk_points.csv, curves and midpoint bars."""
    out_dir = Path(out_dir)
    summary = walk_summary(runs)
    meta = dict(meta)
    per_run = meta.pop("run_meta", None) or [{}] * len(runs)
    atomic_write_json(out_dir / WALK_FILE, {"kind": "walk", **meta, "summary": summary,
                                             "runs": [{**extra, **run.to_dict()} for extra, run in zip(per_run, runs)]})
    atomic_write_text(out_dir / "walk.csv", rows_to_csv(summary))
    points = [{"run": i, "site": s.site.index, "name": s.site.name, "path": s.path,
               **{k: v for k, v in r.items() if k != "values"}}
              for i, run in enumerate(runs) for s in run.sites for r in s.rows()]
    atomic_write_text(out_dir / "walk_points.csv", rows_to_csv(points))
    curves = {f"{s.site.index} {s.site.name}": _pooled_rows([run.sites[p] for run in runs])
              for p, s in enumerate(runs[0].sites)}
    clean = sum(r.clean for r in runs) / len(runs)
    save_plot(plots.accuracy_vs_sigma, out_dir / "walk_curves", curves, clean=clean, chance=runs[0].chance,
              title=title or "accuracy with noise at one site")
    # Every site gets a bar or a mark: a mu beyond the walked range is drawn at the range's end.
    span = tuple(meta.get("sigma_range") or ()) or None
    save_plot(plots.bars, out_dir / "walk_mu", [f"{r['index']} {r['name']}" for r in summary],
              [r["mu_mean"] for r in summary],
              errors=[r["mu_std"] if r["n_found"] > 1 else None for r in summary],
              statuses=[r["statuses"] for r in summary], ranges=[span] * len(summary),
              ylabel="midpoint noise level mu", title=title or "midpoint noise level per site")
    return summary


# ------------------------------------------------------------------------------ sweeps
def write_sweep_analysis(folder: Path, spec: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """results.csv, analysis.json and the sweep plots."""
    folder = Path(folder)
    from nora.sweep.analysis import sweep_analysis, sweep_rows

    atomic_write_text(folder / "results.csv", rows_to_csv(sweep_rows(spec, records)))
    analysis = sweep_analysis(spec, records)
    atomic_write_json(folder / "analysis.json", analysis)
    metric = analysis["axes"]["metric"].replace("_", " ")
    if analysis["curves"]:
        clean = max((m["clean"] for m in analysis["midpoints"]), default=None)
        # Error bars: the spread over seeds (a t-interval from two or three seeds says little).
        spread = {label: [{**r, "ci_low": None if r["std"] is None else r["mean"] - r["std"],
                           "ci_high": None if r["std"] is None else r["mean"] + r["std"]} for r in rows]
                  for label, rows in analysis["curves"].items()}
        save_plot(plots.accuracy_vs_sigma, folder / "sweep_curves", spread, clean=clean,
                  chance=analysis.get("chance"), title=f"{metric} vs {analysis['axes']['x']} (mean ± std over seeds)",
                  xlabel=analysis["axes"]["x"])
    if analysis["midpoints"]:  # every line gets a bar or a mark (no mu: out of range or no drop)
        save_plot(plots.bars, folder / "sweep_mu", [m["line"] for m in analysis["midpoints"]],
                  [m["mu_mean"] for m in analysis["midpoints"]],
                  errors=[m["mu_std"] if m["n_found"] > 1 else None for m in analysis["midpoints"]],
                  statuses=[m["statuses"] for m in analysis["midpoints"]],
                  ylabel="midpoint noise level mu", title="mu per line, spread over seeds")
    heat = analysis["heatmap"]
    if heat:
        save_plot(plots.heatmap, folder / "sweep_heatmap", [[c["mean"] for c in row] for row in heat["cells"]],
                  heat["row_labels"], heat["col_labels"], row_title=heat["row_title"], col_title=heat["col_title"],
                  title=f"{metric} (mean over seeds)")
    return analysis


# ------------------------------------------------------------------------------ evaluations
def write_eval(result) -> list[Path]:
    """<stem>.json/.csv and the accuracy-vs-sigma plot of ``nora eval``."""
    stem = Path(result.out)
    write_table(stem, result.rows, {"kind": "eval", **result.meta})
    label = result.meta.get("noise_description", "noise")
    plotted = [r for r in result.rows if r["sigma"] and r["sigma"] > 0]
    written = [stem.with_suffix(".json"), stem.with_suffix(".csv")]
    if plotted:
        written.append(plots.accuracy_vs_sigma({label: plotted}, stem.with_suffix(".png"), clean=result.clean,
                                               chance=result.meta["chance"], title=result.title))
    return written


def write_trajectory(result) -> list[Path]:
    from nora.dynamic.plots import trajectory_plot

    stem = Path(result.out)
    write_table(stem, result.rows, {"kind": "trajectory", **result.meta})
    png = trajectory_plot(result.rows, stem.with_suffix(".png"), clean=result.meta["clean_accuracy"],
                          chance=result.meta["chance"], time_unit=result.meta.get("time_unit"), title=result.title)
    return [stem.with_suffix(".json"), stem.with_suffix(".csv"), png]


def write_compare(result) -> list[Path]:
    from nora.analysis.robustness import accuracy_matrix

    out = Path(result.out)
    table = result.table
    write_table(out / "robustness", [{k: v for k, v in t.items() if k != "nodes"} for t in table],
                {"kind": "compare", **result.meta, "nodes_by_run": {t["label"]: t["nodes"] for t in table}})
    matrix = accuracy_matrix(list(result.curves.values()))
    matrix_rows = [{"run": t["label"], "sigma_train": t["sigma_train"], "clean": t["clean_accuracy"],
                    **{f"sigma_inf={s:g}": v for s, v in zip(result.sigmas, row)}} for t, row in zip(table, matrix)]
    write_table(out / "matrix", matrix_rows, {"sigmas": result.sigmas, "curves": result.curves})
    written = [plots.heatmap(matrix, [t["label"] for t in table], result.sigmas, out / "matrix.png",
                             row_title="model (method, sigma_train)", col_title="inference sigma",
                             title=f"accuracy, {result.meta['noise_description']}"),
               plots.accuracy_vs_sigma(result.curves, out / "accuracy.png", chance=result.meta["chance"],
                                       title=f"{result.meta['noise_description']} at inference")]
    atomic_write_json(out / "distribution.json", {**result.meta["distribution_spec"],
                                                   "description": result.meta["distribution"]})
    return [out / "robustness.json", out / "matrix.json", *written, out / "distribution.json"]


# ------------------------------------------------------------------------------ uncertainty
def write_uncertainty(result) -> list[Path]:
    """summary.json/.csv, reliability.png with reliability.json/.csv, and the metric-vs-condition plots."""
    from nora.uncertainty import plots

    out = Path(result.out)
    out.mkdir(parents=True, exist_ok=True)
    flat = [{k: v for k, v in r.items() if k != "reliability"} for r in result.rows]
    write_table(out / "summary", flat, {**result.meta, "title": result.title, "per_head": result.per_head})
    written = [out / "summary.json", out / "summary.csv"]
    clean = result.rows[0]
    write_table(out / "reliability", clean["reliability"], {"ece": clean["ece"], "condition": "clean"})
    written += [out / "reliability.json", out / "reliability.csv",
                plots.reliability_diagram(clean["reliability"], clean["ece"], out / "reliability.png", title=result.title)]
    for kind, axis in (("shift", "severity"), ("noise", "sigma")):
        rows = [f for f in flat if f["kind"] == kind]
        if rows:
            written.append(plots.metrics_over([flat[0], *rows], axis, out / f"{kind}.png", title=result.title))
    return written


# ------------------------------------------------------------------------------ compression
def write_compress(result) -> list[Path]:
    """result.json (without the per-episode records), policy.csv, episodes.csv and pareto.png in the
    search's own folder (a resumed search finishes where it started, so it has no other place)."""
    from nora.compress.results import episode_rows, pareto_plot

    out = Path(result.out)
    data = result.data
    s = data["settings"]
    summary = {k: v for k, v in data.items() if k not in ("records", "chosen")}
    written = [atomic_write_json(out / "result.json", summary),
               atomic_write_text(out / "policy.csv", rows_to_csv(data["policy"])),
               atomic_write_text(out / "episodes.csv", rows_to_csv(episode_rows(data["records"])))]
    written.append(pareto_plot(data["records"], out / "pareto.png", target=s["target"],
                               reference_accuracy=data["reference"]["accuracy"], chosen=data["chosen"],
                               final=data["final"],
                               title=f"{s['agent']}, {s['mode']}, {s['backend']}: {data['episodes']} policies"))
    return written


# ------------------------------------------------------------------------------ roofline profile
def write_profile(result) -> list[Path]:
    """profile.json, layers.csv, bandwidth.csv, a roofline plot per backend and the bandwidth plot."""
    from nora.perf.plots import bandwidth_plot, roofline_plot

    out, profile = Path(result.out), result.profile
    data = profile.data
    written = [atomic_write_json(out / "profile.json", data)]
    if data["layers"]:
        written.append(atomic_write_text(out / "layers.csv", rows_to_csv(data["layers"])))
    written.append(atomic_write_text(out / "bandwidth.csv", "bytes,level,bandwidth_Bps\n" + "".join(
        f"{r['bytes']},{r['level']},{r['bandwidth']:.6g}\n" for r in profile.roof.sweep)))
    for backend in profile.backends:
        points = [p for p, r in zip(profile.points, data["layers"]) if r["backend"] == backend]
        written.append(roofline_plot(profile.roof, points, out / f"roofline-{backend}.png",
                                     title=f"{backend}: layers on the host roofline"))
    written.append(bandwidth_plot(profile.roof, out / "bandwidth.png"))
    return written


_MAIN_FILE = {"eval": "{stem}.json", "trajectory": "{stem}.json", "curve": "curve.json", "walk": "walk.json",
              "compare": "robustness.json", "uncertainty": "summary.json"}


def request_of(result) -> dict[str, Any]:
    """What a result answers: the question, not the answer (two equal requests give equal numbers)."""
    meta = result.meta
    levels = [r.get("sigma") for r in getattr(result, "rows", [])] or sorted(
        {r["sigma"] for c in getattr(result, "curves", []) for r in c.rows} if hasattr(result, "curves") and
        isinstance(result.curves, list) else [])
    return {"kind": result.kind, "levels": levels,
            **{k: meta.get(k) for k in ("noise", "seed", "repeats", "test_samples", "checkpoint", "checkpoints",
                                         "sigma_range", "per_decade", "distribution", "trajectory", "varied",
                                         "weights_sha256", "ood", "shifts", "bins")}}


def _main_file(result, out: Path) -> Path:
    pattern = _MAIN_FILE[result.kind]
    return out.with_suffix(".json") if "{stem}" in pattern else out / pattern


def free_place(result) -> Path:
    """Where a result goes without overwriting another question's: its own place, or the first
    ``-2``, ``-3``, ... beside it that is free or holds the same request."""
    import json

    out = Path(result.out)
    request = json.loads(json.dumps(request_of(result), default=str))
    for n in range(1, 1000):
        place = out if n == 1 else out.with_name(f"{out.name}-{n}")
        main = _main_file(result, place)
        if not main.exists():
            return place
        try:
            if json.loads(main.read_text()).get("request") == request:
                return place
        except (OSError, ValueError):
            continue
    raise ValueError(f"no free place for results beside {out}")


def save(result) -> list[Path]:
    """Write a workflow result's files where it belongs (never over another question's results)."""
    if result.kind == "compress":
        return write_compress(result)
    if result.kind == "profile":  # a measurement of this host, not a question with an answer to keep apart
        return write_profile(result)
    result.out = free_place(result)
    result.meta["request"] = request_of(result)
    if result.kind == "eval":
        return write_eval(result)
    if result.kind == "curve":
        return write_curves(result.out, result.curves, {**result.meta, "title": result.title},
                            heatmap=result.heatmap, title=result.title)
    if result.kind == "walk":
        result.summary = write_walk(result.out, result.runs, {**result.meta, "title": result.title},
                                    title=result.title)
        return [Path(result.out) / WALK_FILE]
    if result.kind == "compare":
        return write_compare(result)
    if result.kind == "trajectory":
        return write_trajectory(result)
    if result.kind == "uncertainty":
        return write_uncertainty(result)
    raise ValueError(f"no writer for results of kind {result.kind!r}")
