"""Robustness commands: ``nora compare`` (NT vs VANT and friends) and ``nora eval --dynamic``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nora.cli.common import console, err_console, noise_args, noise_config, print_table
from nora.errors import NoraError


def _progress(total: int, description: str):
    from rich.progress import Progress

    progress = Progress(console=err_console, transient=True)
    task = progress.add_task(description, total=total)
    return progress, lambda: progress.advance(task)


def _test_loader(config):
    from nora.data import make_loader
    from nora.train.setup import load_data

    _, test = load_data(config.data)
    return test, make_loader(test, batch_size=config.data.test_batch_size, shuffle=False)


# ----------------------------------------------------------------------------- eval --dynamic
def eval_dynamic(model, config, noise_cfg, trajectory_path: str, out_dir: Path, *, stem: Path | None = None,
                 confidence: float = 0.95) -> list[dict]:
    """Accuracy along a trajectory: a table and <stem>.json/.csv/.png (default stem <out_dir>/dynamic-<name>)."""
    from nora.analysis.evaluate import accuracy
    from nora.dynamic import evaluate_trajectory, load_trajectory
    from nora.dynamic.plots import trajectory_plot
    from nora.train.metrics import write_table
    from nora.train.setup import injector_options, noise_model

    trajectory = load_trajectory(trajectory_path)
    test, loader = _test_loader(config)
    clean = accuracy(model, loader)
    progress, tick = _progress(len(trajectory.times) * trajectory.repeats, "trajectory")
    with progress:
        rows = evaluate_trajectory(model, loader, noise_model(noise_cfg), trajectory, confidence=confidence,
                                   injector_options=injector_options(noise_cfg), progress=tick)
    chance = 1.0 / test.num_classes
    unit = f" ({trajectory.time_unit})" if trajectory.time_unit else ""
    print_table(
        f"{noise_cfg.kind} noise along '{trajectory.name}': {trajectory.describe()}; clean accuracy {clean:.4f}",
        [f"time{unit}", "sigma", "mean acc", "std", f"{int(confidence * 100)}% CI low", "CI high"],
        [(f"{r['time']:g}", r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]) for r in rows],
    )
    stem = stem.with_suffix("") if stem is not None else out_dir / f"dynamic-{trajectory.name}"
    extra = {"clean_accuracy": clean, "chance": chance, "trajectory": trajectory.describe(),
             "process": trajectory.process.model_dump(), "jitter": trajectory.jitter.model_dump() if trajectory.jitter else None,
             "noise": noise_cfg.model_dump(mode="json"), "time_unit": trajectory.time_unit}
    write_table(stem, rows, extra)
    trajectory_plot(rows, stem.with_suffix(".png"), clean=clean, chance=chance, time_unit=trajectory.time_unit,
                    title=f"{trajectory.name}: {trajectory.process.summary()}")
    console.print(f"wrote {stem.with_suffix('.json')}, .csv and .png")
    return rows


# ----------------------------------------------------------------------------- compare
def _run_summary(path: str) -> dict[str, Any]:
    from nora.config import parse_config
    from nora.train.checkpoint import load_model

    model, meta = load_model(path)
    config = parse_config(meta.get("config", {}), f"{path} (saved config)")
    noise = config.train_noise
    sigma_train = noise.sigma if noise is not None else 0.0
    schedule = config.train.noise_schedule.name if config.train.noise_schedule is not None else "constant"
    if noise is None or (noise.sigma <= 0 and not noise.sigmas):
        method = "clean"
    else:  # noisy training with or without warm-up is NT; other schedules keep their name
        method = {"constant": "NT", "warmup": "NT", "vant": "VANT"}.get(schedule, schedule)
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    return {"path": str(path), "name": run_dir.name, "model": model, "config": config, "method": method,
            "sigma_train": float(sigma_train), "dataset": config.data.dataset}


def compare_runs(runs: list[dict[str, Any]], noise_cfg, distribution, sigmas: list[float], out_dir: Path, *,
                 nodes: int, repeats: int, seed: int, confidence: float = 0.95) -> list[dict[str, Any]]:
    """Robustness of each run under ``distribution`` plus its accuracy over ``sigmas``; tables, files, plots."""
    from nora.analysis.evaluate import accuracy, noisy_accuracy
    from nora.analysis.plots import accuracy_vs_sigma, heatmap
    from nora.analysis.robustness import accuracy_matrix, evaluate_robustness
    from nora.io import atomic_write_json
    from nora.train.metrics import write_table
    from nora.train.setup import injector_options, noise_model

    test, loader = _test_loader(runs[0]["config"])
    noise, options = noise_model(noise_cfg), injector_options(noise_cfg)
    node_count = len(distribution.nodes(nodes)[0])
    progress, tick = _progress(len(runs) * (node_count + len(sigmas)) * repeats, "robustness")
    table, curves = [], {}
    with progress:
        for run in runs:
            clean = accuracy(run["model"], loader)
            result = evaluate_robustness(run["model"], loader, noise, distribution, nodes=nodes, repeats=repeats,
                                         seed=seed, confidence=confidence, injector_options=options, progress=tick,
                                         clean=clean)
            curve = noisy_accuracy(run["model"], loader, noise, sigmas, repeats=repeats, seed=seed,
                                   confidence=confidence, injector_options=options, progress=tick)
            curves[run["label"]] = curve
            table.append({"label": run["label"], "run": run["path"], "method": run["method"],
                          "sigma_train": run["sigma_train"], **result})
    print_table(
        f"robustness = mean accuracy over {distribution.describe()} / clean accuracy "
        f"({node_count} quadrature nodes x {repeats} repeats, {noise_cfg.kind} noise)",
        ["run", "method", "sigma_train", "clean acc", "mean acc", "robustness %", f"{int(confidence * 100)}% CI"],
        [(t["label"], t["method"], f"{t['sigma_train']:g}", t["clean_accuracy"], t["mean_accuracy"],
          f"{100 * t['robustness']:.1f}", f"{100 * t['robustness_ci'][0]:.1f}-{100 * t['robustness_ci'][1]:.1f}")
         for t in table],
    )
    matrix = accuracy_matrix(list(curves.values()))
    print_table(
        "accuracy per inference sigma (rows: sigma_train and method; columns: sigma_inf)",
        ["run", "sigma_train", "clean", *(f"{s:g}" for s in sigmas)],
        [(t["label"], f"{t['sigma_train']:g}", t["clean_accuracy"], *row) for t, row in zip(table, matrix)],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    chance = 1.0 / test.num_classes
    write_table(out_dir / "robustness", [{k: v for k, v in t.items() if k != "nodes"} for t in table],
                {"distribution": distribution.describe(), "noise": noise_cfg.model_dump(mode="json"), "seed": seed,
                 "nodes": {t["label"]: t["nodes"] for t in table}})
    matrix_rows = [{"run": t["label"], "sigma_train": t["sigma_train"], "clean": t["clean_accuracy"],
                    **{f"sigma_inf={s:g}": v for s, v in zip(sigmas, row)}} for t, row in zip(table, matrix)]
    write_table(out_dir / "matrix", matrix_rows, {"sigmas": sigmas, "curves": curves})
    heatmap(matrix, [f"{t['label']}" for t in table], sigmas, out_dir / "matrix.png",
            row_title="model (method, sigma_train)", col_title="inference sigma",
            title=f"accuracy, {noise_cfg.kind} noise")
    accuracy_vs_sigma(curves, out_dir / "accuracy.png", chance=chance, title=f"{noise_cfg.kind} noise at inference")
    atomic_write_json(out_dir / "distribution.json", {"spec": distribution.kind, "params": list(distribution.params),
                                                       "description": distribution.describe()})
    console.print(f"wrote {out_dir}/robustness.json/.csv, matrix.json/.csv/.png and accuracy.png")
    return table


def cmd_compare(args) -> None:
    from nora.analysis.robustness import parse_sigma_dist
    from nora.config import apply_overrides
    from nora.noise.models import check_sigma

    distribution = parse_sigma_dist(args.sigma_dist)
    if args.repeats < 1:
        raise NoraError(f"--repeats must be >= 1, got {args.repeats}")
    if args.nodes < 1:
        raise NoraError(f"--nodes must be >= 1, got {args.nodes}")
    if args.labels and len(args.labels) != len(args.runs):
        raise NoraError(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    sigmas = sorted({check_sigma(s) for s in args.sigma}) if args.sigma else distribution.default_grid()
    runs = [_run_summary(path) for path in args.runs]
    datasets = {r["dataset"] for r in runs}
    if len(datasets) > 1:
        raise NoraError(f"the runs were trained on different data sets ({', '.join(sorted(datasets))}); compare like with like")
    short = [f"{r['method']} {r['sigma_train']:g}" for r in runs]
    for i, run in enumerate(runs):
        if args.labels:
            run["label"] = args.labels[i]
        else:  # method and sigma_train, and the run's name where that alone is ambiguous
            run["label"] = short[i] if short.count(short[i]) == 1 else f"{short[i]} ({run['name']})"
    overrides = {k: v for k, v in (("data.root", args.data_root), ("data.test_subset", args.test_subset)) if v}
    if overrides:
        runs[0]["config"] = apply_overrides(runs[0]["config"], overrides)
    out_dir = Path(args.output) if args.output else Path(runs[0]["path"]).resolve().parent / "compare"
    compare_runs(runs, noise_config(args), distribution, sigmas, out_dir, nodes=args.nodes, repeats=args.repeats,
                 seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("compare", help="robustness of trained runs under a distribution of inference sigmas (NT vs VANT)")
    p.add_argument("runs", nargs="+", help="run folders or model.safetensors files (same data set)")
    p.add_argument("--sigma-dist", required=True,
                   help="inference-sigma distribution: lognormal:MEAN,STD (mean and std of sigma itself), "
                        "normal:M,S (clipped at 0), uniform:A,B or grid:S1,S2,...")
    noise_args(p, sigma_help="inference sigmas of the accuracy matrix and curves (default: a log grid around the distribution)")
    p.add_argument("--nodes", type=int, default=16, help="quadrature nodes for the distribution (equal-probability midpoints)")
    p.add_argument("--repeats", type=int, default=2, help="independent noise draws per inference sigma")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", nargs="+", help="one display name per run")
    p.add_argument("--data-root", help="where the test data lies (config: data.root)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test samples")
    p.add_argument("--output", help="output folder (default: <parent of the first run>/compare)")
    p.set_defaults(func=cmd_compare)
