"""The ``nora`` command line.

Every subcommand turns a ``NoraError`` into one ``error: ...`` line and exit code 2; argparse
reports malformed flags the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from nora.errors import NoraError

console = Console()
err_console = Console(stderr=True)


# --------------------------------------------------------------------------------- helpers
def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NoraError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def _sites_arg(values: Sequence[str] | None) -> Any:
    if not values:
        return "all"
    return [int(v) if v.isdigit() else v for v in values]


def _print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="right" if col not in ("name", "type", "noise", "module") else "left")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def _noise_args(parser: argparse.ArgumentParser, sigma_many: bool = True) -> None:
    parser.add_argument("--noise", default="additive", choices=["additive", "multiplicative", "combined"],
                        help="noise model (config: eval.noise.kind)")
    parser.add_argument("--sigma", type=float, nargs="+" if sigma_many else None, required=True,
                        help="noise level(s); the amplitude for combined noise (config: eval.sigmas)")
    parser.add_argument("--ratio", type=float, default=0.5, help="combined noise: additive share r (config: eval.noise.ratio)")
    parser.add_argument("--order", default="mul_add", choices=["mul_add", "add_mul"], help="combined noise order")
    parser.add_argument("--relative", choices=["std", "maxabs"], default=None,
                        help="sigma relative to each site's clean output std or max|x| (calibrated on test data)")
    parser.add_argument("--normalize", action="store_true", help="divide sigma by the elements per sample")
    parser.add_argument("--sites", nargs="+", default=None,
                        help="sites: indices, ranges 0-5, names, globs, or types (default: all)")
    parser.add_argument("--site-repeats", type=int, default=1, help="repeated execution R at every noisy site")


def _noise_config(args) -> "NoiseConfig":
    from nora.config import NoiseConfig

    try:
        return NoiseConfig(kind=args.noise, sigma=0.0, ratio=args.ratio, order=args.order, relative=args.relative,
                           normalize=args.normalize, sites=_sites_arg(args.sites), repeats=args.site_repeats)
    except Exception as exc:  # pydantic ValidationError
        raise NoraError(f"bad noise option: {str(exc).splitlines()[-1].strip()}") from None


def _check_sigmas(sigmas: Sequence[float]) -> list[float]:
    from nora.noise.models import check_sigma

    return [check_sigma(s) for s in sigmas]


# --------------------------------------------------------------------------------- commands
def cmd_sites(args) -> None:
    import torch

    from nora.models import build_model
    from nora.sim.sites import discover_sites, resolve_site_types
    from nora.train.checkpoint import load_model

    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        kwargs = _overrides(args.kwarg)
        if args.input_shape:
            kwargs["input_shape"] = tuple(args.input_shape)
        if args.classes:
            kwargs["num_classes"] = args.classes
        model = build_model(args.model, **kwargs)
    sites = discover_sites(model, torch.zeros(2, *model.input_shape), resolve_site_types(args.site_types))
    if args.json:
        print(json.dumps([s.to_dict() for s in sites], indent=2))
        return
    _print_table(
        f"{len(sites)} noise sites of {getattr(model, 'arch', type(model).__name__)} (input {tuple(model.input_shape)})",
        ["index", "name", "type", "output shape", "elements"],
        [(s.index, s.name, s.module_type, "x".join(map(str, s.output_shape)), s.numel) for s in sites],
    )


def _run_config(args):
    from nora.config import apply_overrides, load_config, parse_config

    config = load_config(args.config) if args.config else parse_config({})
    overrides = _overrides(args.set)
    for flag, key in (("name", "name"), ("epochs", "train.epochs"), ("data_root", "data.root"),
                      ("output_dir", "output_dir"), ("seed", "seed"), ("threads", "train.threads")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "no_progress", False):
        overrides["train.progress"] = False
    return apply_overrides(config, overrides, args.config or "command line") if overrides else config


def cmd_train(args) -> None:
    from nora.train.trainer import train

    config = _run_config(args)
    result = train(config, console=err_console)
    from nora.analysis.plots import training_curves

    training_curves(result.metrics, result.run_dir / "training.png", title=result.run_dir.name)
    console.print(f"run {result.run_dir}: test accuracy {result.test_accuracy:.4f} "
                  f"after {len(result.metrics)} epochs; checkpoint {result.run_dir / 'model.safetensors'}")
    if config.eval.sigmas:
        noise = config.eval.noise or _default_eval_noise()
        _evaluate_and_report(result.model, config, noise, config.eval.sigmas, config.eval.repeats,
                             result.run_dir / "eval", seed=config.seed, confidence=config.eval.confidence)


def _default_eval_noise():
    from nora.config import NoiseConfig

    return NoiseConfig(kind="additive")


def _evaluate_and_report(model, config, noise_cfg, sigmas, repeats, out_stem: Path, *, seed: int,
                         confidence: float = 0.95, title: str = "") -> list[dict]:
    from rich.progress import Progress

    from nora.analysis.evaluate import accuracy, noisy_accuracy
    from nora.analysis.plots import accuracy_vs_sigma
    from nora.data import make_loader
    from nora.train.metrics import write_table
    from nora.train.setup import injector_options, load_data, noise_model

    _, test = load_data(config.data)
    loader = make_loader(test, batch_size=config.data.test_batch_size, shuffle=False)
    clean = accuracy(model, loader)
    options = injector_options(noise_cfg)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("noisy evaluation", total=len(sigmas) * repeats)
        rows = noisy_accuracy(model, loader, noise_model(noise_cfg), sigmas, repeats=repeats, seed=seed,
                              confidence=confidence, injector_options=options,
                              progress=lambda: progress.advance(task))
    chance = 1.0 / test.num_classes
    kind = noise_cfg.kind
    _print_table(
        f"{kind} noise, {repeats} repeats, sites={noise_cfg.sites}: clean accuracy {clean:.4f}, chance {chance:.2f}",
        ["sigma", "mean acc", "std", f"{int(confidence * 100)}% CI low", "CI high"],
        [(r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]) for r in rows],
    )
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    extra = {"clean_accuracy": clean, "chance": chance, "noise": noise_cfg.model_dump(mode="json"),
             "repeats": repeats, "seed": seed}
    write_table(out_stem, rows, extra)
    accuracy_vs_sigma({f"{kind}, sites={noise_cfg.sites}": rows}, out_stem.with_suffix(".png"),
                      clean=clean, chance=chance, title=title or f"{kind} noise")
    console.print(f"wrote {out_stem.with_suffix('.json')}, .csv and .png")
    return rows


def cmd_eval(args) -> None:
    from nora.config import apply_overrides, parse_config
    from nora.train.checkpoint import load_model, read_meta

    sigmas = _check_sigmas(args.sigma)
    model, meta = load_model(args.checkpoint)
    config = parse_config(meta.get("config", {}), f"{args.checkpoint} (saved config)")
    overrides = {}
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.test_subset:
        overrides["data.test_subset"] = args.test_subset
    if overrides:
        config = apply_overrides(config, overrides)
    noise_cfg = _noise_config(args)
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.output) if args.output else run_dir / "eval" / f"{args.noise}"
    if args.repeats < 1:
        raise NoraError(f"--repeats must be >= 1, got {args.repeats}")
    _evaluate_and_report(model, config, noise_cfg, sigmas, args.repeats, out.with_suffix(""), seed=args.seed)


def cmd_demo(args) -> None:
    from nora.config import parse_config
    from nora.train.trainer import train

    config = parse_config(
        {
            "name": "demo-digits-lenet5",
            "output_dir": args.output_dir,
            "seed": args.seed,
            "data": {"dataset": "digits", "batch_size": 64, "test_batch_size": 512},
            "model": {"arch": "lenet5"},
            "train": {"epochs": args.epochs, "lr": 2e-3},
        },
        "demo",
    )
    console.print("[bold]nora demo[/bold]: LeNet-5 on scikit-learn's bundled digits (8x8), "
                  "trained clean, then evaluated under additive and multiplicative noise at every site")
    import torch

    from nora.sim.sites import discover_sites

    result = train(config, console=err_console)
    from nora.analysis.plots import training_curves

    training_curves(result.metrics, result.run_dir / "training.png", title="LeNet-5 on digits")
    sites = discover_sites(result.model, torch.zeros(2, *result.model.input_shape))
    console.print(f"trained: test accuracy {result.test_accuracy:.4f}; the model has {len(sites)} noise sites")
    from nora.config import NoiseConfig

    sigmas = [0.03, 0.1, 0.3, 1.0, 3.0]
    for kind in ("additive", "multiplicative"):
        _evaluate_and_report(result.model, config, NoiseConfig(kind=kind), sigmas, 5,
                             result.run_dir / "eval" / kind, seed=config.seed,
                             title=f"LeNet-5 / digits, {kind} noise at all {len(sites)} sites")


# --------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nora", description="Noise simulation and robustness for neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train LeNet-5 on the bundled digits and evaluate it under noise")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sites", help="list the noise sites of a model")
    p.add_argument("--model", default="lenet5", help="registered model name")
    p.add_argument("--checkpoint", help="list the sites of a trained checkpoint instead")
    p.add_argument("--input-shape", type=int, nargs="+", help="input shape without batch, e.g. 3 32 32")
    p.add_argument("--classes", type=int, help="number of classes")
    p.add_argument("--kwarg", nargs="*", help="model options key=value (e.g. batch_norm=true)")
    p.add_argument("--site-types", nargs="+", help="module types that get sites (default: methods.md placement)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_sites)

    p = sub.add_parser("train", help="train a model (clean or noisy) from a config file")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. train.epochs=3")
    p.add_argument("--name", help="run name (config: name)")
    p.add_argument("--epochs", type=int, help="config: train.epochs")
    p.add_argument("--data-root", help="config: data.root")
    p.add_argument("--output-dir", help="config: output_dir")
    p.add_argument("--seed", type=int, help="config: seed")
    p.add_argument("--threads", type=int, help="config: train.threads")
    p.add_argument("--no-progress", action="store_true", help="config: train.progress=false")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint clean and under noise")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    _noise_args(p)
    p.add_argument("--repeats", type=int, default=5, help="independent noise draws per sigma (config: eval.repeats)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="where the test data lies (config: data.root)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test samples")
    p.add_argument("--output", help="output path stem (default: <run>/eval/<noise>)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except NoraError as exc:
        err_console.print(Text("error: ", style="red") + Text(str(exc)), soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished epochs and results are saved")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
