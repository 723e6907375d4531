"""What a finished sweep says: one row per point, curves over the sigma axis, mu per line, heat map.

Computed from the stored point records only (no model is loaded); the report writer renders it.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from nora.analysis.midpoint import aggregate, midpoint
from nora.stats import summarize


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
