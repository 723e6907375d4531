"""Robustness analysis commands: curve, walk, sweep, report."""

from __future__ import annotations

import json
from pathlib import Path

from nora.cli.commands_core import data_overrides, results_lock
from nora.cli.common import (
    analysis_config,
    check_positive,
    console,
    err_console,
    noise_args,
    print_result,
    print_table,
    sites_arg,
)
from nora.errors import NoraError
from nora.progress import Reporter


def _range_flags(parser, default_range=(1e-2, 1e2)) -> None:
    parser.add_argument("--sigma-range", type=float, nargs=2, default=list(default_range), metavar=("LOW", "HIGH"),
                        help="log grid of sigmas from LOW to HIGH")
    parser.add_argument("--per-decade", type=float, default=4, help="grid points per decade")
    parser.add_argument("--repeats", type=int, default=5, help="independent noise draws per sigma")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the seed-tree root of every repeat)")


def _data_flags(parser) -> None:
    parser.add_argument("--data-root", help="where the test data lie (config: data.root)")
    parser.add_argument("--test-subset", type=int, help="use N test samples, spread evenly over the set")
    parser.add_argument("--chunk-size", type=int, default=500, help="test samples per chunk (bounds memory)")


def _out_dir(args, loaded, kind: str, noise_cfg) -> Path:
    from nora.workflows import evaluation_name

    if args.output:
        return Path(args.output)
    return loaded.run_dir / kind / evaluation_name(noise_cfg)


# ------------------------------------------------------------------------------ curve
def cmd_curve(args) -> None:
    from nora.analysis.curves import check_sigma_range, log_grid
    from nora.report.files import save
    from nora.train.setup import noise_spec
    from nora.workflows import curve, load_checkpoint, vary

    lo, hi = check_sigma_range(*args.sigma_range)
    log_grid(lo, hi, args.per_decade)
    check_positive(args.repeats, "--repeats")
    chunk = check_positive(args.chunk_size, "--chunk-size")
    loaded = load_checkpoint(args.checkpoint, data_overrides(args))
    noise_cfg = analysis_config(args, loaded.config).eval.noise
    if args.vary:
        key, low, high = args.vary
        value_range = check_sigma_range(_number(low, "--vary LOW"), _number(high, "--vary HIGH"))
        with Reporter(err_console, unit="levels") as progress:
            result = vary(loaded, noise_spec(noise_cfg), key, value_range=value_range, per_decade=args.per_decade,
                          repeats=args.repeats, seed=args.seed, out=_out_dir(args, loaded, "curve", noise_cfg),
                          device=args.device, progress=progress)
        with results_lock(loaded, result.out):
            written = save(result)
        print_result(result, as_json=args.json, written=written)
        return
    with Reporter(err_console, unit="levels") as progress:
        result = curve(loaded, noise_spec(noise_cfg), sigma_range=(lo, hi), per_decade=args.per_decade,
                       repeats=args.repeats, seed=args.seed, out=_out_dir(args, loaded, "curve", noise_cfg),
                       ratios=args.ratio, mul_add=args.mul_add, device=args.device, chunk_size=chunk,
                       seeds=check_positive(args.seeds, "--seeds"), progress=progress)
    with results_lock(loaded, result.out):
        written = save(result)
    print_result(result, as_json=args.json, written=written)


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise NoraError(f"{flag} must be a number, got {text!r}") from None


# ------------------------------------------------------------------------------ walk
def cmd_walk(args) -> None:
    from nora.report.files import save
    from nora.train.setup import noise_spec
    from nora.workflows import load_checkpoint, walk_study

    chunk = check_positive(args.chunk_size, "--chunk-size")
    if args.mu_only and args.naive:
        raise NoraError("--naive measures the dense grid; it cannot be combined with --mu-only")
    loaded = [load_checkpoint(c, data_overrides(args)) for c in args.checkpoint]
    noise_cfg = analysis_config(args, loaded[0].config).eval.noise
    # a site takes seconds to minutes: a plain line after every one
    with Reporter(err_console, unit="sites", interval=0) as progress:
        result = walk_study(loaded, noise_spec(noise_cfg), sites=sites_arg(args.sites),
                            sigma_range=tuple(args.sigma_range), per_decade=args.per_decade, mu_only=args.mu_only,
                            naive=args.naive, repeats=args.repeats, seed=args.seed, seeds=args.seeds,
                            out=_out_dir(args, loaded[0], "walk", noise_cfg), device=args.device, chunk_size=chunk,
                            progress=progress)
    with results_lock(loaded[0], result.out):
        written = save(result)
    print_result(result, as_json=args.json, written=written)
    for message in result.messages():  # on stderr, so that --json output stays one document
        err_console.print(message, soft_wrap=True)


# ------------------------------------------------------------------------------ sweep
def cmd_sweep(args) -> None:
    from nora.report import write_report
    from nora.sweep import load_sweep, run_sweep

    spec, base = load_sweep(args.config)
    if args.max_points is not None:
        check_positive(args.max_points, "--max-points")

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
                    [(m["line"], m["clean"], m["mu_mean"], m["mu_std"], f"{m['n_found']}/{m['n']}")
                     for m in analysis["midpoints"]])
    console.print(f"sweep {outcome.folder}: {outcome.total} points, {outcome.skipped} were already done, ran "
                  f"{outcome.ok + outcome.failed} on {outcome.engine} in {outcome.seconds:.1f} s "
                  f"(start-up {outcome.startup_seconds:.1f} s); {ok} ok and {failed} failed in total, "
                  f"{outcome.remaining} still to run. Report: {outcome.folder}/report.md", soft_wrap=True)
    if failed:
        raise NoraError(f"{failed} of {outcome.total} sweep points failed; their errors are in {outcome.folder}/report.md")


def _accuracies(record) -> list:
    result = record.get("result") or {}
    noisy = result.get("noisy")
    return [result.get("test_accuracy", "-"), noisy["mean"] if noisy else "-"]


# ------------------------------------------------------------------------------ report
def cmd_report(args) -> None:
    from nora.report import write_report

    written = write_report(args.folder, args.format, screenshot=args.screenshot)
    console.print("wrote " + ", ".join(str(p) for p in written), soft_wrap=True)


def register(sub) -> None:
    p = sub.add_parser("curve", help="accuracy vs sigma on a log grid (global or at chosen sites), with mu")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    noise_args(p, multi_ratio=True, sigma=False)
    p.add_argument("--mul-add", action="store_true",
                   help="combined noise: heat map over (sigma_mul, sigma_add), both on the sigma grid")
    _range_flags(p)
    p.add_argument("--seeds", type=int, default=1, help="noise seeds (one curve each; mu is aggregated over them)")
    p.add_argument("--vary", nargs=3, metavar=("KEY", "LOW", "HIGH"),
                   help="with --analog: accuracy against a physical parameter (e.g. forward.out_noise 0.01 1) "
                        "on a log grid of --per-decade points, instead of sigma")
    _data_flags(p)
    p.add_argument("--output", help="output folder (default: <run>/curve/<noise>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("walk", help="Walking Noise: noise at one site at a time, midpoint noise level per site")
    p.add_argument("--checkpoint", required=True, nargs="+", help="run folder(s); several are aggregated like seeds")
    noise_args(p, sigma=False)
    _range_flags(p)
    p.add_argument("--seeds", type=int, default=1, help="noise seeds per checkpoint (mu is aggregated over them)")
    p.add_argument("--mu-only", action="store_true",
                   help="adaptive search for mu (bracketing, bisection, fit) instead of the dense grid")
    p.add_argument("--naive", action="store_true", help="reference walk: full forward for every evaluation")
    _data_flags(p)
    p.add_argument("--output", help="output folder (default: <run>/walk/<noise>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
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

    p = sub.add_parser("report", help="one Markdown report and the same as self-contained HTML for a curve, walk or "
                                      "sweep folder")
    p.add_argument("folder", help="a folder written by nora curve, walk or sweep")
    p.add_argument("--format", nargs="+", default=["md", "html"], choices=["md", "html"])
    p.add_argument("--screenshot", action="store_true",
                   help="also render report.html in headless Chromium into report.png (needs Debian's chromium)")
    p.set_defaults(func=cmd_report)
