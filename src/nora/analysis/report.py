"""Raw results, plots and readable reports for curves, walks and sweeps.

Every analysis writes its numbers (JSON with everything, CSV with the flat rows) beside its plots
(PNG and SVG) into one folder; ``write_report`` turns such a folder into ``report.md`` and
``report.html`` that show the tables and embed the plots.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from nora.analysis import plots
from nora.analysis.curves import Curve
from nora.analysis.midpoint import aggregate, midpoint
from nora.analysis.stats import summarize
from nora.analysis.walk import WalkResult
from nora.errors import NoraError
from nora.io import atomic_write_json, atomic_write_text
from nora.sweep.store import SWEEP_FILE, ResultStore
from nora.train.metrics import rows_to_csv

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
    found = [r for r in summary if r["mu_mean"] is not None]
    if found:
        save_plot(plots.bars, out_dir / "walk_mu", [f"{r['index']} {r['name']}" for r in found],
                  [r["mu_mean"] for r in found], errors=[r["mu_std"] or 0.0 for r in found],
                  ylabel="midpoint noise level mu", title=title or "midpoint noise level per site")
    return summary


# ------------------------------------------------------------------------------ sweeps
def sweep_rows(spec: dict[str, Any], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per point: its grid values and the headline numbers."""
    rows = []
    for rec in records:
        result = rec.get("result") or {}
        row = {"id": rec["id"], "status": rec["status"], **rec["values"]}
        row["test_accuracy"] = result.get("test_accuracy")
        noisy = result.get("noisy")
        row["noisy_accuracy"] = noisy["mean"] if noisy else None
        row["noisy_std"] = noisy["std"] if noisy else None
        curve = result.get("curve")
        row["curve_mu"] = curve["midpoint"]["mu"] if curve else None
        weights = result.get("weights")
        if weights:
            row["weight_max_abs"] = weights["max_abs"]
            row["weight_mean_abs"] = weights["mean_abs"]
        row["seconds"] = result.get("seconds")
        row["error"] = rec.get("error", "")
        rows.append(row)
    return rows


def sweep_axes(spec: dict[str, Any]) -> dict[str, Any]:
    """Which grid key is the sigma axis, which keys make separate lines, which two make a heat map."""
    keys = list(spec["grid"])
    chosen = dict(spec.get("report") or {})
    x = chosen.get("x") or next((k for k in keys if k.rsplit(".", 1)[-1] in ("sigma", "amplitude")), None)
    lines = chosen.get("lines")
    if lines is None:
        lines = [k for k in keys if k != x]
    lines = [lines] if isinstance(lines, str) else list(lines)
    heat = chosen.get("heatmap")
    if heat is None and x is not None and len(keys) == 2 and all(k != "seed" for k in keys):
        heat = [k for k in keys if k != x] + [x]
    metric = chosen.get("metric") or ("noisy_accuracy" if spec.get("evaluate", {}).get("at_train_noise", True)
                                      else "test_accuracy")
    return {"x": x, "lines": lines, "heatmap": heat, "metric": metric}


def _label(values: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={values[k]}" for k in keys) or "all points"


def _metric(record: dict[str, Any], metric: str) -> float | None:
    """A point's headline number; a point trained without noise scores its clean accuracy "at its noise"."""
    result = record.get("result") or {}
    if metric == "noisy_accuracy":
        return (result.get("noisy") or {}).get("mean", result.get("test_accuracy"))
    value = result.get(metric)
    return value if isinstance(value, (int, float)) else None


def _line_midpoints(label: str, records: list[dict[str, Any]], x: str, metric: str, chance: float) -> dict[str, Any]:
    """mu along the sigma axis for one line, per seed, then over seeds.

    A_max is the clean accuracy of the line's points at sigma 0 (trained without noise), else at its
    smallest sigma; sigma 0 itself has no place on the log axis.
    """
    positive = [r for r in records if float(r["values"][x]) > 0]
    lowest = min((float(r["values"][x]) for r in positive), default=0.0)
    base = ([r for r in records if float(r["values"][x]) == 0]
            or [r for r in positive if float(r["values"][x]) == lowest])
    clean = sum(r["result"]["test_accuracy"] for r in base) / len(base)
    per_seed: dict[Any, list[dict[str, Any]]] = {}
    for r in positive:
        per_seed.setdefault(r["values"].get("seed"), []).append(r)
    mids = []
    for recs in per_seed.values():
        ordered = sorted(recs, key=lambda r: float(r["values"][x]))
        xs = [float(r["values"][x]) for r in ordered]
        if len(set(xs)) == len(xs):
            mids.append(midpoint(xs, [_metric(r, metric) for r in ordered], clean, chance))
    return {"line": label, "clean": clean, **{k: v for k, v in aggregate(mids).items() if k != "values"}}


def sweep_analysis(spec: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Curves over the sigma axis (mean over seeds), mu per line and seed, and the heat map."""
    axes = sweep_axes(spec)
    x, lines, metric = axes["x"], axes["lines"], axes["metric"]
    ok = [r for r in records if r["status"] == "ok" and _metric(r, metric) is not None]
    out: dict[str, Any] = {"axes": axes, "curves": {}, "midpoints": [], "heatmap": None}
    if not ok:
        return out
    chance = 1.0 / ok[0]["result"]["num_classes"]
    out["chance"] = chance
    if x is not None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for rec in ok:
            groups.setdefault(_label(rec["values"], lines), []).append(rec)
        for label, recs in groups.items():
            by_x: dict[float, list[float]] = {}
            for r in recs:
                if float(r["values"][x]) > 0:
                    by_x.setdefault(float(r["values"][x]), []).append(_metric(r, metric))
            out["curves"][label] = [{"sigma": s, **summarize(v)} for s, v in sorted(by_x.items())]
            out["midpoints"].append(_line_midpoints(label, recs, x, metric, chance))
    if axes["heatmap"]:
        rows_key, cols_key = axes["heatmap"]
        row_values = sorted({json.dumps(r["values"][rows_key]) for r in ok}, key=lambda v: _sort_key(json.loads(v)))
        col_values = sorted({json.dumps(r["values"][cols_key]) for r in ok}, key=lambda v: _sort_key(json.loads(v)))
        cells = []
        for rv in row_values:
            row = []
            for cv in col_values:
                hits = [_metric(r, metric) for r in ok
                        if json.dumps(r["values"][rows_key]) == rv and json.dumps(r["values"][cols_key]) == cv]
                row.append({"row": json.loads(rv), "col": json.loads(cv),
                            **(summarize(hits) if hits else {"mean": float("nan"), "n": 0})})
            cells.append(row)
        out["heatmap"] = {"row_title": rows_key, "col_title": cols_key, "cells": cells,
                          "row_labels": [json.loads(v) for v in row_values],
                          "col_labels": [json.loads(v) for v in col_values]}
    return out


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, json.dumps(v))


def write_sweep_analysis(folder: Path, spec: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """results.csv, analysis.json and the sweep plots."""
    folder = Path(folder)
    atomic_write_text(folder / "results.csv", rows_to_csv(sweep_rows(spec, records)))
    analysis = sweep_analysis(spec, records)
    atomic_write_json(folder / "analysis.json", analysis)
    metric = analysis["axes"]["metric"].replace("_", " ")
    if analysis["curves"]:
        clean = max((m["clean"] for m in analysis["midpoints"]), default=None)
        # Error bars: the spread over seeds (a t-interval from two or three seeds says little).
        spread = {label: [{**r, "ci_low": r["mean"] - r["std"], "ci_high": r["mean"] + r["std"]} for r in rows]
                  for label, rows in analysis["curves"].items()}
        save_plot(plots.accuracy_vs_sigma, folder / "sweep_curves", spread, clean=clean,
                  chance=analysis.get("chance"), title=f"{metric} vs {analysis['axes']['x']} (mean ± std over seeds)",
                  xlabel=analysis["axes"]["x"])
    found = [m for m in analysis["midpoints"] if m["mu_mean"] is not None]
    if found:
        save_plot(plots.bars, folder / "sweep_mu", [m["line"] for m in found], [m["mu_mean"] for m in found],
                  errors=[m["mu_std"] or 0.0 for m in found], ylabel="midpoint noise level mu",
                  title="mu per line, spread over seeds")
    heat = analysis["heatmap"]
    if heat:
        save_plot(plots.heatmap, folder / "sweep_heatmap", [[c["mean"] for c in row] for row in heat["cells"]],
                  heat["row_labels"], heat["col_labels"], row_title=heat["row_title"], col_title=heat["col_title"],
                  title=f"{metric} (mean over seeds)")
    return analysis


# ------------------------------------------------------------------------------ documents
Block = tuple  # ("h1"|"h2"|"p", text) | ("table", columns, rows) | ("img", path, caption)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "table":
            columns, rows = block[1], block[2]
            out.append("| " + " | ".join(columns) + " |")
            out.append("|" + "---|" * len(columns))
            out += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
    return "\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                           for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<figure><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise NoraError(f"{path} is not readable JSON (corrupt or truncated)") from None


def _images(folder: Path, stems: Sequence[tuple[str, str]]) -> list[Block]:
    return [("img", f"{stem}.png", caption) for stem, caption in stems if (folder / f"{stem}.png").exists()]


def _curve_blocks(folder: Path, data: dict[str, Any]) -> list[Block]:
    first = data["curves"][0]
    blocks: list[Block] = [
        ("h1", f"Accuracy vs noise: {data.get('title') or data.get('checkpoint', folder.name)}"),
        ("p", (f"noise {data.get('noise', {}).get('kind', '?')}, {data.get('repeats')} repeats, "
               f"seed {data.get('seed')}; clean accuracy {first['clean_accuracy']:.4f}, "
               f"chance {first['chance']:.3f}.")),
        ("table", ["curve", "mu", "status", "note"],
         [[c["label"], fmt_mu(c["midpoint"]["mu"]), c["midpoint"]["status"], c["midpoint"]["message"]]
          for c in data["curves"]]),
    ]
    blocks += _images(folder, [("curve", "accuracy vs sigma"), ("heatmap", "accuracy over two noise parameters")])
    blocks.append(("h2", "Measurements"))
    blocks.append(("table", ["curve", "sigma", "mean", "std", "CI low", "CI high"],
                   [[c["label"], r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]]
                    for c in data["curves"] for r in c["rows"]]))
    return blocks


def _walk_blocks(folder: Path, data: dict[str, Any]) -> list[Block]:
    runs = data["runs"]
    blocks: list[Block] = [
        ("h1", f"Walking Noise: {data.get('title') or folder.name}"),
        ("p", (f"noise {data.get('noise', {}).get('kind', '?')}, mode {runs[0]['mode']}, {len(runs)} run(s) "
               f"(checkpoints x noise seeds), {runs[0]['repeats']} repeats; clean accuracy "
               f"{sum(r['clean_accuracy'] for r in runs) / len(runs):.4f}, chance {runs[0]['chance']:.3f}; "
               f"{sum(r['seconds'] for r in runs):.1f} s.")),
        ("table", *walk_table(data["summary"])),
    ]
    blocks += _images(folder, [("walk_mu", "midpoint noise level per site"),
                               ("walk_curves", "accuracy vs sigma, noise at one site")])
    return blocks


def _sweep_blocks(folder: Path, data: dict[str, Any]) -> list[Block]:
    store = ResultStore.open_existing(folder)
    records = store.records()
    analysis = write_sweep_analysis(folder, data["spec"], records)
    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "failed")}
    total = data.get("points", len(records))
    blocks: list[Block] = [
        ("h1", f"Sweep {data['spec'].get('name', folder.name)}"),
        ("p", f"{counts['ok']} of {total} points finished, {counts['failed']} failed; grid "
              + "; ".join(f"{k}: {v}" for k, v in data["spec"]["grid"].items())
              + f"; seeds {data['spec'].get('seeds')}. Fingerprint {data['fingerprint'][:12]}."),
    ]
    if analysis["midpoints"]:
        blocks.append(("table", ["line", "clean acc", "mu (mean ± std over seeds)", "found", "status"],
                       [[m["line"], m["clean"], fmt_mu(m["mu_mean"], m.get("mu_std")), f"{m['n_found']}/{m['n']}",
                         ", ".join(m["statuses"])] for m in analysis["midpoints"]]))
    blocks += _images(folder, [("sweep_curves", "accuracy vs sigma per line"), ("sweep_mu", "mu per line"),
                               ("sweep_heatmap", "heat map")])
    rows = sweep_rows(data["spec"], records)
    if rows:
        columns = [c for c in rows[0] if c != "error" and any(r.get(c) is not None for r in rows)]
        blocks += [("h2", "Points"), ("table", columns, [[r.get(c) for c in columns] for r in rows])]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        blocks += [("h2", "Failed points"), ("table", ["id", "error"], [[r["id"], r.get("error", "")] for r in failed])]
    return blocks


def write_report(folder: str | Path, formats: Sequence[str] = ("md", "html")) -> list[Path]:
    """report.md / report.html for a folder written by ``nora curve``, ``nora walk`` or ``nora sweep``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoraError(f"no results folder at {folder}")
    for name, build in ((SWEEP_FILE, _sweep_blocks), (WALK_FILE, _walk_blocks), (CURVE_FILE, _curve_blocks)):
        if (folder / name).exists():
            blocks = build(folder, _read(folder / name))
            break
    else:
        raise NoraError(f"{folder} holds no nora results ({SWEEP_FILE}, {WALK_FILE} or {CURVE_FILE})")
    written = []
    title = blocks[0][1]
    for fmt in formats:
        if fmt == "md":
            written.append(atomic_write_text(folder / "report.md", to_markdown(blocks)))
        elif fmt == "html":
            written.append(atomic_write_text(folder / "report.html", to_html(blocks, title)))
        else:
            raise NoraError(f"unknown report format {fmt!r}; choose md or html")
    return written
