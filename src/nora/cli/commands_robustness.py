"""``nora compare``: robustness of trained runs (NT vs VANT and friends) under an inference-sigma distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nora.cli.commands_core import data_overrides
from nora.cli.common import analysis_config, check_positive, err_console, noise_args, print_result
from nora.errors import NoraError
from nora.progress import Reporter


def _method(loaded) -> dict[str, Any]:
    """How a run was trained: clean, NT (constant or warm-up noise), VANT, or its schedule's name."""
    noise = loaded.config.train_noise
    schedule = loaded.config.train.noise_schedule.name if loaded.config.train.noise_schedule is not None else "constant"
    if noise is None or (noise.sigma <= 0 and not noise.sigmas):
        method = "clean"
    else:
        method = {"constant": "NT", "warmup": "NT", "vant": "VANT"}.get(schedule, schedule)
    return {"method": method, "sigma_train": float(noise.sigma if noise is not None else 0.0)}


def cmd_compare(args) -> None:
    from nora.analysis.robustness import parse_sigma_dist
    from nora.noise.models import check_sigma
    from nora.report.files import save
    from nora.train.setup import noise_spec
    from nora.workflows import compare, load_checkpoint

    distribution = parse_sigma_dist(args.sigma_dist)
    check_positive(args.repeats, "--repeats")
    check_positive(args.nodes, "--nodes")
    if args.labels and len(args.labels) != len(args.runs):
        raise NoraError(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    sigmas = sorted({check_sigma(s) for s in args.sigma}) if args.sigma else distribution.default_grid()
    first = load_checkpoint(args.runs[0], data_overrides(args))
    runs = [first] + [load_checkpoint(path, data=first.test) for path in args.runs[1:]]
    datasets = {r.meta.get("dataset") for r in runs}
    if len(datasets) > 1:
        raise NoraError(f"the runs were trained on different data sets ({', '.join(sorted(map(str, datasets)))}); "
                        "compare like with like")
    methods = [_method(r) for r in runs]
    short = [f"{m['method']} {m['sigma_train']:g}" for m in methods]
    labels = list(args.labels) if args.labels else [
        s if short.count(s) == 1 else f"{s} ({r.run_dir.name})" for s, r in zip(short, runs)]
    noise_cfg = analysis_config(args, first.config).eval.noise
    out = Path(args.output) if args.output else first.run_dir.resolve().parent / "compare"
    with Reporter(err_console, unit="levels") as progress:
        result = compare(runs, labels, methods, noise_spec(noise_cfg), distribution, sigmas, nodes=args.nodes,
                         repeats=args.repeats, seed=args.seed, out=out, device=args.device, progress=progress)
    print_result(result, as_json=args.json, written=save(result))


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
    p.add_argument("--test-subset", type=int, help="evaluate on N test samples, spread evenly over the set")
    p.add_argument("--output", help="output folder (default: <parent of the first run>/compare)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.set_defaults(func=cmd_compare)
