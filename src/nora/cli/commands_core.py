"""Core commands: demo, sites, train, eval."""

from __future__ import annotations

import json
import re
from pathlib import Path

from nora.cli.common import (
    check_sigmas,
    console,
    default_eval_noise,
    err_console,
    evaluate_and_report,
    noise_args,
    noise_config,
    parse_overrides,
    print_table,
)
from nora.errors import NoraError


def cmd_sites(args) -> None:
    import torch

    from nora.models import build_model
    from nora.sim.sites import discover_sites, resolve_site_types
    from nora.train.checkpoint import load_model

    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        kwargs = parse_overrides(args.kwarg)
        if args.input_shape:
            kwargs["input_shape"] = tuple(args.input_shape)
        if args.classes:
            kwargs["num_classes"] = args.classes
        model = build_model(args.model, **kwargs)
    sites = discover_sites(model, torch.zeros(2, *model.input_shape), resolve_site_types(args.site_types))
    if args.json:
        print(json.dumps([s.to_dict() for s in sites], indent=2))
        return
    print_table(
        f"{len(sites)} noise sites of {getattr(model, 'arch', type(model).__name__)} (input {tuple(model.input_shape)})",
        ["index", "name", "type", "output shape", "elements"],
        [(s.index, s.name, s.module_type, "x".join(map(str, s.output_shape)), s.numel) for s in sites],
    )


def _run_config(args):
    from nora.config import apply_overrides, load_config, parse_config

    config = load_config(args.config) if args.config else parse_config({})
    overrides = parse_overrides(args.set)
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
        noise = config.eval.noise or default_eval_noise()
        evaluate_and_report(result.model, config, noise, config.eval.sigmas, config.eval.repeats,
                             result.run_dir / "eval" / noise.kind, seed=config.seed,
                            confidence=config.eval.confidence)


def _result_name(noise_cfg) -> str:
    """A file name that tells evaluations apart: kind, relative mode and site selection."""
    parts = [noise_cfg.kind]
    if noise_cfg.relative:
        parts.append(f"rel-{noise_cfg.relative}")
    if noise_cfg.sites != "all":
        sites = noise_cfg.sites if isinstance(noise_cfg.sites, list) else [noise_cfg.sites]
        parts.append("sites-" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", str(s)) for s in sites))
    return "-".join(parts)


def cmd_eval(args) -> None:
    from nora.config import apply_overrides, parse_config
    from nora.train.checkpoint import load_model

    if bool(args.sigma) == bool(args.dynamic):
        raise NoraError("give either --sigma (a list of noise levels) or --dynamic FILE (a trajectory), not both or neither")
    sigmas = check_sigmas(args.sigma) if args.sigma else []
    model, meta = load_model(args.checkpoint)
    config = parse_config(meta.get("config", {}), f"{args.checkpoint} (saved config)")
    overrides = {}
    if args.data_root:
        overrides["data.root"] = args.data_root
    if args.test_subset:
        overrides["data.test_subset"] = args.test_subset
    if overrides:
        config = apply_overrides(config, overrides)
    noise_cfg = noise_config(args)
    ckpt = Path(args.checkpoint)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    out = Path(args.output) if args.output else run_dir / "eval" / _result_name(noise_cfg)
    if args.dynamic:
        from nora.cli.commands_robustness import eval_dynamic

        eval_dynamic(model, config, noise_cfg, args.dynamic, run_dir / "eval", stem=Path(args.output) if args.output else None)
        return
    if args.repeats < 1:
        raise NoraError(f"--repeats must be >= 1, got {args.repeats}")
    evaluate_and_report(model, config, noise_cfg, sigmas, args.repeats, out.with_suffix(""), seed=args.seed)


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
        evaluate_and_report(result.model, config, NoiseConfig(kind=kind), sigmas, 5,
                             result.run_dir / "eval" / kind, seed=config.seed,
                             title=f"LeNet-5 / digits, {kind} noise at all {len(sites)} sites")




def register(sub) -> None:
    p = sub.add_parser("demo", help="train LeNet-5 on the bundled digits and evaluate it under noise")
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--epochs", type=int, default=40)
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
    noise_args(p, sigma_help="noise level(s); the amplitude for combined noise (config: eval.sigmas); or use --dynamic")
    p.add_argument("--dynamic", metavar="FILE",
                   help="instead of --sigma: a trajectory YAML (times, noise process, repeats, seed); "
                        "reports accuracy over time")
    p.add_argument("--repeats", type=int, default=5, help="independent noise draws per sigma (config: eval.repeats)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", help="where the test data lies (config: data.root)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test samples")
    p.add_argument("--output", help="output path stem (default: <run>/eval/<noise>)")
    p.set_defaults(func=cmd_eval)
