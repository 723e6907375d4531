"""Training workflows: a run (trained or resumed) and the evaluations its config asks for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from rich.console import Console

from nora.config import NoiseConfig, RunConfig, parse_config
from nora.train.setup import load_data, noise_spec
from nora.train.trainer import RunResult, train
from nora.workflows.analyses import Loaded, evaluate
from nora.workflows.results import EvalResult


@dataclasses.dataclass
class TrainOutcome:
    run: RunResult
    evaluations: list[EvalResult]


def evaluation_name(noise_cfg: NoiseConfig) -> str:
    """A file name that tells evaluations apart: kind, relative mode, site selection, weight noise."""
    import re

    parts = [noise_cfg.kind]
    if noise_cfg.relative:
        parts.append(f"rel-{noise_cfg.relative}")
    if noise_cfg.sites != "all":
        sites = noise_cfg.sites if isinstance(noise_cfg.sites, list) else [noise_cfg.sites]
        parts.append("sites-" + "_".join(re.sub(r"[^A-Za-z0-9]+", "", str(s)) for s in sites))
    if noise_cfg.weight is not None and noise_cfg.weight.sigma > 0:
        parts.append(f"weight-{noise_cfg.weight.sigma:g}")
    if noise_cfg.hardware is not None:
        hardware = noise_cfg.hardware
        parts.append("analog-" + re.sub(r"[^A-Za-z0-9]+", "", str(hardware.get("preset") or hardware.get("kind", "own"))))
    return "-".join(parts)


def train_run(config: RunConfig, console: Console, extend: bool = False) -> TrainOutcome:
    """Train (resume, or with ``extend`` lengthen) ``config``'s run, then evaluate it at
    ``eval.sigmas`` if any are set."""
    run = train(config, console=console, extend=extend)
    evaluations = []
    if config.eval.sigmas:
        noise_cfg = config.eval.noise or NoiseConfig()
        loaded = Loaded(str(run.run_dir), run.model, run.meta, config, load_data(config.data)[1])
        evaluations.append(evaluate(loaded, noise_spec(noise_cfg), config.eval.sigmas, repeats=config.eval.repeats,
                                    seed=config.seed, out=run.run_dir / "eval" / evaluation_name(noise_cfg),
                                    confidence=config.eval.confidence))
    return TrainOutcome(run, evaluations)


def demo(output_dir: str, epochs: int, seed: int, console: Console) -> TrainOutcome:
    """LeNet-5 on the bundled digits, trained clean, then evaluated under additive and multiplicative
    noise at every site (the README's first command)."""
    config = parse_config({
        "name": "demo-digits-lenet5", "output_dir": output_dir, "seed": seed,
        "data": {"dataset": "digits", "batch_size": 64, "test_batch_size": 512},
        "model": {"arch": "lenet5"}, "train": {"epochs": epochs, "lr": 2e-3},
    }, "demo")
    run = train(config, console=console)
    loaded = Loaded(str(run.run_dir), run.model, run.meta, config, load_data(config.data)[1])
    evaluations = []
    for kind in ("additive", "multiplicative"):
        spec = noise_spec(NoiseConfig(kind=kind))
        evaluations.append(evaluate(loaded, spec, [0.03, 0.1, 0.3, 1.0, 3.0], repeats=5, seed=seed,
                                    out=run.run_dir / "eval" / kind, title=f"LeNet-5 / digits, {kind} noise at all sites"))
    return TrainOutcome(run, evaluations)


def training_plot(run: RunResult) -> Path:
    from nora.analysis.plots import training_curves

    return training_curves(run.metrics, run.run_dir / "training.png", title=run.run_dir.name)

