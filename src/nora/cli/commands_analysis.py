"""Robustness analysis commands: curve, walk, sweep, report."""

from __future__ import annotations

import json
from pathlib import Path

from nora.cli.common import console, err_console, print_table, sites_arg
from nora.errors import NoraError


# ------------------------------------------------------------------------------ shared pieces
def _noise_flags(parser, ratios: bool = False) -> None:
    parser.add_argument("--noise", default="additive", choices=["additive", "multiplicative", "combined"],
                        help="noise model")
    if ratios:
        parser.add_argument("--ratio", type=float, nargs="+", default=[0.5],
                            help="combined noise: additive share r; several give one curve each and a heat map")
    else:
        parser.add_argument("--ratio", type=float, default=0.5, help="combined noise: additive share r")
    parser.add_argument("--order", default="mul_add", choices=["mul_add", "add_mul"], help="combined noise order")
    parser.add_argument("--relative", choices=["std", "maxabs"], default=None,
                        help="sigma relative to each site's clean output std or max|x| (calibrated on test data)")
    parser.add_argument("--normalize", action="store_true", help="divide sigma by the elements per sample")
    parser.add_argument("--site-repeats", type=int, default=1, help="repeated execution R at every noisy site")


def _range_flags(parser, default_range=(1e-2, 1e2)) -> None:
    parser.add_argument("--sigma-range", type=float, nargs=2, default=list(default_range), metavar=("LOW", "HIGH"),
                        help="log grid of sigmas from LOW to HIGH")
    parser.add_argument("--per-decade", type=float, default=4, help="grid points per decade")
    parser.add_argument("--repeats", type=int, default=5, help="independent noise draws per sigma")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (repeat r uses seed + r)")


def _data_flags(parser) -> None:
    parser.add_argument("--data-root", help="where the test data lie (config: data.root)")
    parser.add_argument("--test-subset", type=int, help="use the first N test samples")
    parser.add_argument("--chunk-size", type=int, default=500, help="test samples per chunk (bounds memory)")


def _noise_config(args, ratio: float | None = None, sites=None):
    from pydantic import ValidationError

    from nora.config import NoiseConfig

    try:
        return NoiseConfig(kind=args.noise, ratio=args.ratio if ratio is None else ratio, order=args.order,
                           relative=args.relative, normalize=args.normalize, repeats=args.site_repeats,
                           sites="all" if sites is None else sites)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise NoraError(f"bad noise option {'.'.join(map(str, first['loc']))}: "
                        f"{first['msg'].removeprefix('Value error, ')}") from None


def _check_positive(value: int, flag: str) -> int:
    if value < 1:
        raise NoraError(f"{flag} must be >= 1, got {value}")
    return value


def _load(checkpoint: str, args):
    """The model and its test set (from the checkpoint's saved run config, with the data flags applied)."""
    from nora.config import apply_overrides, parse_config
    from nora.train.checkpoint import load_model
    from nora.train.setup import load_data

    model, meta = load_model(checkpoint)
    config = parse_config(meta.get("config") or {"data": {"dataset": meta.get("dataset", "digits")}},
                          f"{checkpoint} (saved config)")
    overrides = {}
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.test_subset:
        overrides["data.test_subset"] = _check_positive(args.test_subset, "--test-subset")
    if overrides:
        config = apply_overrides(config, overrides, "command line")
    _, test = load_data(config.data)
    return model, test


def _out_dir(args, checkpoint: str, kind: str) -> Path:
    if args.output:
        return Path(args.output)
    ckpt = Path(checkpoint)
    return (ckpt if ckpt.is_dir() else ckpt.parent) / kind / args.noise


# ------------------------------------------------------------------------------ curve
def cmd_curve(args) -> None:
    from nora.analysis.curves import accuracy_curve, check_sigma_range, combined_grid, log_grid, mul_add_cells
    from nora.analysis.report import curve_table, midpoint_table, write_curves
    from nora.train.setup import injector_options, noise_model

    lo, hi = check_sigma_range(*args.sigma_range)
    grid = log_grid(lo, hi, args.per_decade)
    _check_positive(args.repeats, "--repeats")
    chunk = _check_positive(args.chunk_size, "--chunk-size")
    if args.noise != "combined" and (len(args.ratio) > 1 or args.mul_add):
        raise NoraError("--ratio with several values and --mul-add are for combined noise (--noise combined)")
    model, test = _load(args.checkpoint, args)
    sites = sites_arg(args.sites)
    curves = []
    for ratio in args.ratio:
        cfg = _noise_config(args, ratio, sites)
        options = injector_options(cfg)
        options.pop("sites")
        label = f"{args.noise}" + (f", ratio={ratio:g}" if args.noise == "combined" else "") + f", sites={cfg.sites}"
        curves.append(accuracy_curve(model, test.x, test.y, noise_model(cfg), grid, num_classes=test.num_classes,
                                     sites=None if cfg.sites == "all" else cfg.sites, injector_options=options,
                                     repeats=args.repeats, seed=args.seed, chunk_size=chunk, label=label,
                                     clean=curves[0].clean if curves else None))
    heat = None
    if args.mul_add:
        cfg = _noise_config(args, 0.5, sites)
        options = injector_options(cfg)
        cells = combined_grid(model, test.x, test.y, noise_model(cfg), mul_add_cells(grid, grid),
                              sites=None if cfg.sites == "all" else cfg.sites,
                              injector_options={k: v for k, v in options.items() if k != "sites"},
                              repeats=args.repeats, seed=args.seed, chunk_size=chunk)
        heat = {"cells": cells, "row_labels": _labels(grid), "col_labels": _labels(grid), "row_title": "sigma_add",
                "col_title": "sigma_mul", "title": "accuracy under combined noise"}
    elif len(args.ratio) > 1:
        heat = {"cells": [[{"amplitude": r["sigma"], "ratio": ratio, **{k: r[k] for k in ("mean", "std", "n")}}
                           for r in c.rows] for ratio, c in zip(args.ratio, curves)],
                "row_labels": list(args.ratio), "col_labels": _labels(grid), "row_title": "ratio (additive share)",
                "col_title": "amplitude", "title": "accuracy under combined noise"}
    out = _out_dir(args, args.checkpoint, "curve")
    meta = {"checkpoint": str(args.checkpoint),
            "noise": _noise_config(args, args.ratio[0], sites).model_dump(mode="json"),
            "repeats": args.repeats, "seed": args.seed, "test_samples": len(test),
            "xlabel": "amplitude" if args.noise == "combined" else "sigma"}
    title = f"{Path(args.checkpoint).name}: {args.noise} noise, sites={sites}"
    write_curves(out, curves, meta, heatmap=heat, title=title)
    first = curves[0]
    print_table(f"{title}: {args.repeats} repeats on {len(test)} test samples; clean accuracy {first.clean:.4f}, "
                f"chance {first.chance:.2f}", *curve_table(curves))
    print_table("midpoint noise level", *midpoint_table(curves))
    console.print(f"wrote {out}/curve.json, curve.csv, curve.png/.svg" + (", heatmap.*" if heat else ""))


def _labels(grid: list[float]) -> list[float]:
    """Grid values rounded for axis labels (the numbers themselves stay exact in curve.json)."""
    return [float(f"{s:.3g}") for s in grid]


# ------------------------------------------------------------------------------ walk
def cmd_walk(args) -> None:
    from rich.progress import Progress

    from nora.analysis.curves import check_sigma_range, log_grid
    from nora.analysis.report import walk_table, write_walk
    from nora.analysis.walk import naive_walk, walk
    from nora.data import make_loader
    from nora.train.setup import noise_model

    lo, hi = check_sigma_range(*args.sigma_range)
    grid = None if args.mu_only else log_grid(lo, hi, args.per_decade)
    if args.mu_only and args.naive:
        raise NoraError("--naive measures the dense grid; it cannot be combined with --mu-only")
    _check_positive(args.repeats, "--repeats")
    _check_positive(args.seeds, "--seeds")
    chunk = _check_positive(args.chunk_size, "--chunk-size")
    cfg = _noise_config(args)
    noise = noise_model(cfg)
    runs, run_meta = [], []
    for checkpoint in args.checkpoint:
        model, test = _load(checkpoint, args)
        for seed in range(args.seed, args.seed + args.seeds):
            with Progress(console=err_console, transient=True) as progress:
                task = progress.add_task(f"walk {Path(checkpoint).name} seed {seed}", total=None)

                def advance(site_walk, task=task, progress=progress):
                    progress.update(task, description=f"site {site_walk.site.index} {site_walk.site.name}: "
                                                      f"{site_walk.path}")
                if args.naive:
                    loader = make_loader(test, batch_size=chunk, shuffle=False)
                    result = naive_walk(model, loader, noise, grid, num_classes=test.num_classes,
                                        sites=sites_arg(args.sites), repeats=args.repeats, seed=seed)
                else:
                    result = walk(model, test.x, test.y, noise, num_classes=test.num_classes,
                                  sites=sites_arg(args.sites), sigmas=grid,
                                  sigma_range=(lo, hi) if args.mu_only else None, repeats=args.repeats, seed=seed,
                                  site_repeats=args.site_repeats, chunk_size=chunk, progress=advance)
            if runs and [s.site.name for s in result.sites] != [s.site.name for s in runs[0].sites]:
                raise NoraError(f"{checkpoint} has other sites than {args.checkpoint[0]}; walk them separately")
            runs.append(result)
            run_meta.append({"checkpoint": str(checkpoint), "noise_seed": seed})
    out = _out_dir(args, args.checkpoint[0], "walk")
    meta = {"checkpoints": [str(c) for c in args.checkpoint], "noise": cfg.model_dump(mode="json"),
            "sigma_range": [lo, hi], "per_decade": args.per_decade, "run_meta": run_meta,
            "test_samples": len(test)}
    summary = write_walk(out, runs, meta, title=f"Walking Noise: {args.noise}")
    paths = sorted({s.path for run in runs for s in run.sites})
    print_table(f"Walking Noise, {args.noise}, {runs[0].mode} ({'dense grid' if grid else 'adaptive search'} "
                f"{lo:g}..{hi:g}), {len(runs)} run(s) x {args.repeats} repeats; clean accuracy "
                f"{sum(r.clean for r in runs) / len(runs):.4f}, chance {runs[0].chance:.2f}; "
                f"{sum(r.seconds for r in runs):.1f} s; evaluation path: {', '.join(paths)}", *walk_table(summary))
    for row in summary:
        for message in row["messages"]:
            console.print(f"site {row['index']} {row['name']}: {message}")
    console.print(f"wrote {out}/walk.json, walk.csv, walk_points.csv, walk_curves.png/.svg, walk_mu.png/.svg")


# ------------------------------------------------------------------------------ sweep
def cmd_sweep(args) -> None:
    from nora.analysis.report import write_report
    from nora.sweep import load_sweep, run_sweep

    spec, base = load_sweep(args.config)
    if args.max_points is not None:
        _check_positive(args.max_points, "--max-points")

    def on_record(record, done, total):
        values = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in record["values"].items())
        if record["status"] == "ok":
            result = record["result"]
            noisy = result.get("noisy")
            extra = f", at its noise {noisy['mean']:.4f}" if noisy else ""
            console.print(f"[{done}/{total}] {record['id']}: test acc {result['test_accuracy']:.4f}{extra} "
                          f"({result['seconds']:.1f} s)")
        else:
            console.print(f"[{done}/{total}] {record['id']} ({values}) [red]failed[/red]: {record['error']}")

    outcome = run_sweep(spec, base, engine=args.engine, workers=args.workers, address=args.address,
                        fallback_local=args.fallback_local, output_dir=args.output_dir, data_root=args.data_root,
                        on_record=on_record, warn=lambda m: err_console.print(f"warning: {m}"),
                        limit=args.max_points)
    write_report(outcome.folder)
    analysis = json.loads((outcome.folder / "analysis.json").read_text())
    ok = sum(r["status"] == "ok" for r in outcome.records)
    failed = sum(r["status"] == "failed" for r in outcome.records)
    keys = list(spec.grid) + ["seed"]
    print_table(f"sweep {spec.name}: {len(outcome.records)} of {outcome.total} points stored",
                [k.rsplit(".", 1)[-1] for k in keys] + ["status", "test acc", "acc at its noise"],
                [[str(r["values"].get(k)) for k in keys] + [r["status"], *_accuracies(r)] for r in outcome.records])
    if analysis["midpoints"]:
        print_table("midpoint noise level per line (over seeds)", ["line", "clean acc", "mu", "std", "found"],
                    [(m["line"], m["clean"], "-" if m["mu_mean"] is None else m["mu_mean"],
                      "-" if m["mu_std"] is None else m["mu_std"], f"{m['n_found']}/{m['n']}")
                     for m in analysis["midpoints"]])
    console.print(f"sweep {outcome.folder}: {outcome.total} points, {outcome.skipped} were already done, ran "
                  f"{outcome.ok + outcome.failed} on {outcome.engine} in {outcome.seconds:.1f} s "
                  f"(start-up {outcome.startup_seconds:.1f} s); {ok} ok and {failed} failed in total, "
                  f"{outcome.remaining} still to run. Report: {outcome.folder}/report.md")


def _accuracies(record) -> list:
    result = record.get("result") or {}
    noisy = result.get("noisy")
    return [result.get("test_accuracy", "-"), noisy["mean"] if noisy else "-"]


# ------------------------------------------------------------------------------ report
def cmd_report(args) -> None:
    from nora.analysis.report import write_report

    written = write_report(args.folder, args.format)
    console.print("wrote " + ", ".join(str(p) for p in written))


def register(sub) -> None:
    p = sub.add_parser("curve", help="accuracy vs sigma on a log grid (global or at chosen sites), with mu")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    _noise_flags(p, ratios=True)
    p.add_argument("--sites", nargs="+", default=None, help="noisy sites together (default: all = global noise)")
    p.add_argument("--mul-add", action="store_true",
                   help="combined noise: heat map over (sigma_mul, sigma_add), both on the sigma grid")
    _range_flags(p)
    _data_flags(p)
    p.add_argument("--output", help="output folder (default: <run>/curve/<noise>)")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("walk", help="Walking Noise: noise at one site at a time, midpoint noise level per site")
    p.add_argument("--checkpoint", required=True, nargs="+", help="run folder(s); several are aggregated like seeds")
    _noise_flags(p)
    p.add_argument("--sites", nargs="+", default=None, help="sites to walk: indices, ranges 0-5, names (default: all)")
    _range_flags(p)
    p.add_argument("--seeds", type=int, default=1, help="noise seeds per checkpoint (mu is aggregated over them)")
    p.add_argument("--mu-only", action="store_true",
                   help="adaptive search for mu (bracketing, bisection, fit) instead of the dense grid")
    p.add_argument("--naive", action="store_true", help="reference walk: full forward for every evaluation")
    _data_flags(p)
    p.add_argument("--output", help="output folder (default: <run>/walk/<noise>)")
    p.set_defaults(func=cmd_walk)

    p = sub.add_parser("sweep", help="run a grid of training runs (sites x sigmas x seeds ...), resumable")
    p.add_argument("--config", required=True, help="sweep YAML (base config, grid, seeds, evaluate)")
    p.add_argument("--engine", default="local", choices=["local", "ray", "sequential"],
                   help="local process pool (default), Ray, or one point after another in this process")
    p.add_argument("--workers", type=int, help="parallel points (default: the number of cores)")
    p.add_argument("--address", help="Ray: address of an existing cluster (default: start a local one)")
    p.add_argument("--fallback-local", action="store_true",
                   help="Ray: use the local executor when the cluster cannot be reached")
    p.add_argument("--output-dir", help="parent folder of the sweep folder (default: output_dir of the config)")
    p.add_argument("--data-root", help="where the data lie (config: data.root of every point)")
    p.add_argument("--max-points", type=int, help="run at most N unfinished points now (the rest on the next call)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="Markdown/HTML report with the plots of a curve, walk or sweep folder")
    p.add_argument("folder", help="a folder written by nora curve, walk or sweep")
    p.add_argument("--format", nargs="+", default=["md", "html"], choices=["md", "html"])
    p.set_defaults(func=cmd_report)
