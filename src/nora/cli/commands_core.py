"""Core commands: demo, sites, train, eval."""

from __future__ import annotations

import json
from pathlib import Path

from nora.cli.common import (
    analysis_config,
    check_positive,
    check_sigmas,
    console,
    err_console,
    noise_args,
    parse_overrides,
    print_result,
    print_table,
)
from nora.errors import NoraError
from nora.progress import Reporter


def cmd_sites(args) -> None:
    import torch

    from nora.models import build_model
    from nora.sim.sites import discover_sites, policy_from
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
    sites = discover_sites(model, torch.zeros(2, *model.input_shape), policy_from(args.site_types))
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
    from nora.train import saved_config

    resume = getattr(args, "resume", None)
    if resume and args.config:
        raise NoraError("give either --config FILE (a new or matching run) or --resume RUN (its saved config), not both")
    if resume and (args.name or args.output_dir):
        raise NoraError("--resume RUN continues the run where it is; --name and --output-dir choose a new run")
    if resume:
        config = saved_config(Path(resume))
        if config is None:
            raise NoraError(f"--resume {resume}: no run there (no config.yaml); start it with nora train --config")
    else:
        config = load_config(args.config) if args.config else parse_config({})
    overrides = parse_overrides(args.set)
    if resume:  # the folder as it is now, even if it was moved since
        overrides.update({"name": Path(resume).name, "output_dir": str(Path(resume).parent)})
    for flag, key in (("name", "name"), ("epochs", "train.epochs"), ("data_root", "data.root"),
                      ("output_dir", "output_dir"), ("seed", "seed"), ("threads", "train.threads"),
                      ("device", "train.device")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "no_progress", False):
        overrides["train.progress"] = False
    return apply_overrides(config, overrides, "--set / flags") if overrides else config


def _show_training(outcome) -> None:
    from nora.report.files import save
    from nora.workflows import training_plot

    run = outcome.run
    training_plot(run)
    epochs = len(run.metrics)
    console.print(f"run {run.run_dir}: test accuracy {run.test_accuracy:.4f} after {epochs} "
                  f"epoch{'s' if epochs != 1 else ''}; checkpoint {run.run_dir / 'model.safetensors'}", soft_wrap=True)
    for result in outcome.evaluations:
        print_result(result, written=save(result))


def cmd_train(args) -> None:
    from nora.workflows import train_run

    from nora.train import extended

    config = _run_config(args)
    if args.extend is not None:
        if not args.resume and not args.config:
            raise NoraError("--extend N lengthens a run: give it with --resume RUN (or the run's --config)")
        config = extended(config, args.extend)
    if config.train.threads:
        import torch

        torch.set_num_threads(config.train.threads)
    _show_training(train_run(config, err_console, extend=args.extend is not None))


def cmd_demo(args) -> None:
    from nora.workflows import demo

    console.print("[bold]nora demo[/bold]: LeNet-5 on scikit-learn's bundled digits (8x8), "
                  "trained clean, then evaluated under additive and multiplicative noise at every site", soft_wrap=True)
    _show_training(demo(args.output_dir, args.epochs, args.seed, err_console))


def data_overrides(args) -> dict:
    overrides = {}
    if getattr(args, "data_root", None):
        overrides["data.root"] = args.data_root
    if getattr(args, "test_subset", None):
        overrides["data.test_subset"] = check_positive(args.test_subset, "--test-subset")
    return overrides


def cmd_eval(args) -> None:
    from nora.report.files import save
    from nora.train.setup import noise_spec
    from nora.workflows import evaluate, evaluation_name, load_checkpoint, trajectory

    if args.sigma and args.dynamic:
        raise NoraError("give either --sigma (a list of noise levels) or --dynamic FILE (a trajectory), not both")
    loaded = load_checkpoint(args.checkpoint, data_overrides(args))
    config = analysis_config(args, loaded.config)
    noise_cfg = config.eval.noise
    spec = noise_spec(noise_cfg)
    if args.dynamic:
        result = trajectory(loaded, spec, args.dynamic, out=Path(args.output).with_suffix("") if args.output else None,
                            device=args.device)
    else:
        sigmas = check_sigmas(args.sigma) if args.sigma else list(config.eval.sigmas)
        if not sigmas and spec.hardware is not None:
            sigmas = [None]  # the hardware model (and any configured noise) as it is
        if not sigmas:
            raise NoraError("give --sigma (noise levels), eval.sigmas in --config, --analog, or --dynamic FILE")
        repeats = args.repeats if args.repeats is not None else config.eval.repeats
        out = Path(args.output).with_suffix("") if args.output else loaded.run_dir / "eval" / evaluation_name(noise_cfg)
        with Reporter(err_console, unit="levels") as progress:
            result = evaluate(loaded, spec, sigmas, repeats=check_positive(repeats, "--repeats"), seed=args.seed,
                              out=out, device=args.device, confidence=config.eval.confidence, times=args.times,
                              progress=progress)
    with results_lock(loaded, result.out):
        written = save(result)
    print_result(result, as_json=args.json, written=written)


def results_lock(loaded, out: Path):
    """The run folder's lock while results are written into it (a training run holds it too)."""
    import contextlib

    from nora.io import RunLock

    inside = Path(out).resolve().is_relative_to(loaded.run_dir.resolve())
    return RunLock(loaded.run_dir) if inside else contextlib.nullcontext()


def cmd_config(args) -> None:
    from nora.config import config_keys

    keys = config_keys()
    if args.json:
        print(json.dumps(keys))
        return
    print("\n".join(keys))


def register(sub) -> None:
    p = sub.add_parser("config", help="list every config key (for YAML files, --set and sweep grids)")
    p.add_argument("action", choices=["keys"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_config)

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
    p.add_argument("--site-types", nargs="+", help="module types that get sites (default: every category)")
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
    p.add_argument("--device", help="config: train.device (cpu, cuda, cuda:N, mps)")
    p.add_argument("--no-progress", action="store_true", help="config: train.progress=false")
    p.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its saved config and last epoch")
    p.add_argument("--extend", type=int, metavar="N",
                   help="train N epochs more than the run's config says (a cosine learning rate restarts for them)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint clean and under noise")
    p.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    noise_args(p, sigma_help="noise level(s); the amplitude for combined noise (config: eval.sigmas); or use --dynamic")
    p.add_argument("--dynamic", metavar="FILE",
                   help="instead of --sigma: a trajectory YAML (times, noise process, repeats, seed); "
                        "reports accuracy over time")
    p.add_argument("--times", type=float, nargs="+", metavar="SECONDS",
                   help="with --analog: drift times after programming (each repeat is one programmed chip)")
    p.add_argument("--repeats", type=int, help="independent noise draws per sigma (config: eval.repeats, default 5)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (the seed-tree root of every repeat)")
    p.add_argument("--data-root", help="where the test data lies (config: data.root)")
    p.add_argument("--test-subset", type=int, help="evaluate on N test samples, spread evenly over the set")
    p.add_argument("--output", help="output path stem (default: <run>/eval/<noise>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")
    p.set_defaults(func=cmd_eval)
