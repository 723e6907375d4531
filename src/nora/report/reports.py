"""Reports: what a results folder holds, as one Markdown document and the same as HTML.

The blocks of each kind of result (curve, walk, sweep) are built from the files the analysis wrote;
the header names the model, data, test samples, noise specification and nora version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from nora.errors import NoraError
from nora.version import __version__
from nora.io import atomic_write_text
from nora.report.document import Block, to_html, to_markdown
from nora.report.files import CURVE_FILE, WALK_FILE, fmt_mu, walk_table, write_sweep_analysis


def header(data: dict[str, Any]) -> str:
    """Model, data, samples, noise and version of a result, from the metadata it was written with."""
    model = data.get("model") or data.get("checkpoint") or ", ".join(data.get("checkpoints", [])) or "?"
    parts = [f"model {model}", f"data {data.get('dataset', '?')}", f"{data.get('test_samples', '?')} test samples",
             f"noise {data.get('noise_description') or (data.get('noise') or {}).get('kind', '?')}",
             f"nora {data.get('version', __version__)}"]
    return "; ".join(parts) + "."


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
        ("p", header(data)),
        ("p", (f"{data.get('repeats')} repeats, seed {data.get('seed')}; clean accuracy "
               f"{first['clean_accuracy']:.4f}, chance {first['chance']:.3f}.")),
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
        ("p", header(data)),
        ("p", (f"mode {runs[0]['mode']}, {len(runs)} run(s) "
               f"(checkpoints x noise seeds), {runs[0]['repeats']} repeats; clean accuracy "
               f"{sum(r['clean_accuracy'] for r in runs) / len(runs):.4f}, chance {runs[0]['chance']:.3f}; "
               f"{sum(r['seconds'] for r in runs):.1f} s.")),
        ("table", *walk_table(data["summary"])),
    ]
    blocks += _images(folder, [("walk_mu", "midpoint noise level per site"),
                               ("walk_curves", "accuracy vs sigma, noise at one site")])
    return blocks


def _sweep_blocks(folder: Path, data: dict[str, Any]) -> list[Block]:
    from nora.sweep.store import ResultStore

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
    from nora.sweep.analysis import sweep_rows

    rows = sweep_rows(data["spec"], records)
    if rows:
        columns = [c for c in rows[0] if c != "error" and any(r.get(c) is not None for r in rows)]
        blocks += [("h2", "Points"), ("table", columns, [[r.get(c) for c in columns] for r in rows])]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        blocks += [("h2", "Failed points"), ("table", ["id", "error"], [[r["id"], r.get("error", "")] for r in failed])]
    return blocks


def write_report(folder: str | Path, formats: Sequence[str] = ("md", "html"), screenshot: bool = False) -> list[Path]:
    """report.md / report.html for a folder written by ``nora curve``, ``nora walk`` or ``nora sweep``;
    ``screenshot`` also renders the HTML in headless Chromium into report.png."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoraError(f"no results folder at {folder}")
    for name, build in (("sweep.json", _sweep_blocks), (WALK_FILE, _walk_blocks), (CURVE_FILE, _curve_blocks)):
        if (folder / name).exists():
            blocks = build(folder, _read(folder / name))
            break
    else:
        raise NoraError(f"{folder} holds no nora results (sweep.json, {WALK_FILE} or {CURVE_FILE})")
    unknown = [f for f in formats if f not in ("md", "html")]
    if unknown:
        raise NoraError(f"unknown report format {unknown[0]!r}; choose md or html")
    if screenshot and "html" not in formats:
        raise NoraError("a screenshot renders the HTML report: add html to --format")
    text = to_markdown(blocks)
    written = []
    if "md" in formats:
        written.append(atomic_write_text(folder / "report.md", text))
    if "html" in formats:
        written.append(atomic_write_text(folder / "report.html", to_html(text, blocks[0][1], folder)))
    if screenshot:
        from nora.report.browser import screenshot as render

        written.append(render(folder / "report.html"))
    return written
