"""Clean and noisy training with per-epoch checkpoints that survive a kill.

Every finished epoch writes one ``state.pt`` (weights, optimizer, scheduler, metrics) atomically,
so a killed run resumes at the first unfinished epoch with nothing lost. Every stochastic part of an
epoch takes its own child of the run's seed tree (data order, activation noise, weight noise,
hardware, schedule draws, dropout), so a resumed run computes bit-identical numbers to one that was
never interrupted. Everything is validated (data, model, noise specification, objective) before the
run folder is touched, and the folder is locked while the run writes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from torch import nn

from nora.config import RunConfig, config_differences, config_identity, dump_config, parse_config, read_yaml
from nora.devices import resolve_device
from nora.errors import NoraError
from nora.io import RunLock, atomic_write_text
from nora.measure import clean_accuracy
from nora.noise.weight import clamp_after_step
from nora.progress import Reporter
from nora.seeds import SeedTree, torch_global_seeded
from nora.sim.injector import NoiseInjector
from nora.train import checkpoint
from nora.train.metrics import write_metrics
from nora.train.objectives import StepContext, make_objective
from nora.train.schedules import schedule_from_config
from nora.train.setup import load_data, noise_spec

CONFIG_FILE = "config.yaml"


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    resumed_from: int
    model: nn.Module
    meta: dict[str, Any]

    @property
    def test_accuracy(self) -> float:
        return self.metrics[-1]["test_accuracy"] if self.metrics else float("nan")


#: What an extension (``nora train --extend``) changes in a run's config.
EXTENSION_KEYS = {"train.epochs", "train.lr_restarts"}


def saved_config(run_dir: Path) -> RunConfig | None:
    """The config a run folder was started with, or None for a new folder."""
    existing = Path(run_dir) / CONFIG_FILE
    if not existing.exists():
        return None
    try:
        return parse_config(read_yaml(existing), str(existing))
    except (NoraError, Exception) as exc:
        raise NoraError(f"{run_dir} holds an unreadable run config ({exc}); choose another run name") from None


def extended(config: RunConfig, epochs: int) -> RunConfig:
    """``config`` trained for ``epochs`` more epochs. With the cosine learning rate a new cycle
    starts where the earlier training ends (a warm restart), so the epochs already trained keep
    their rates and the added ones do not all run at the final rate of zero."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise NoraError(f"--extend needs a positive number of epochs, got {epochs!r}")
    t = config.train
    restarts = [*t.lr_restarts, t.epochs] if t.scheduler == "cosine" else list(t.lr_restarts)
    return config.model_copy(update={"train": t.model_copy(update={"epochs": t.epochs + epochs,
                                                                   "lr_restarts": restarts})})


def _check_extension(run_dir: Path, previous: RunConfig, config: RunConfig) -> None:
    """An extension may only lengthen training, and only where the epochs already trained would
    have been the same in the longer run (the noise schedule must not stretch)."""
    if config.train.epochs <= previous.train.epochs:
        raise NoraError(f"{run_dir}: an extension needs more than its {previous.train.epochs} epochs, "
                        f"got {config.train.epochs}")
    trained = previous.train.epochs
    old = schedule_from_config(previous.train.noise_schedule, previous.train_noise, trained, previous.seed)
    new = schedule_from_config(config.train.noise_schedule, config.train_noise, config.train.epochs, config.seed)
    if old is not None:
        for epoch in range(trained):
            for batch in (0, 1):
                a, b = (torch.as_tensor(s.scale(epoch, batch, 4)) for s in (old, new))
                if not torch.equal(a, b):
                    raise NoraError(
                        f"{run_dir}: the noise schedule {old.describe()} stretches with the number of epochs, so "
                        f"extending it would change the {trained} epochs already trained (epoch {epoch + 1}); "
                        "fix its lengths in the config (e.g. settle_epochs) or train a new run")


def _check_run_dir(run_dir: Path, config: RunConfig, extend: bool = False) -> None:
    previous = saved_config(run_dir)
    if extend:
        if previous is None or not (run_dir / checkpoint.STATE).exists():
            raise NoraError(f"{run_dir} holds no trained epoch to extend (start it with nora train first)")
        _check_extension(run_dir, previous, config)
    if previous is not None:
        differing = config_differences(config_identity(previous), config_identity(config))
        if extend:
            differing = [k for k in differing if k not in EXTENSION_KEYS]
        if differing:
            shown = ", ".join(differing[:5]) + (", ..." if len(differing) > 5 else "")
            longer = (f"; to train it longer: nora train --resume {run_dir} --extend N"
                      if set(differing) <= EXTENSION_KEYS else "")
            raise NoraError(
                f"{run_dir} already holds a run with a different config (differs in: {shown}); choose another "
                f"name (name: ...) or move the old run away{longer}"
            )


def make_optimizer(config: RunConfig, model: nn.Module):
    t = config.train
    params = model.parameters()
    if t.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    elif t.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.scheduler != "cosine":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_cycles(t.epochs, t.lr_restarts))


def cosine_cycles(epochs: int, restarts: list[int]) -> Callable[[int], float]:
    """The learning-rate factor of each epoch: a cosine from 1 to 0 over each cycle, restarting at
    every epoch in ``restarts``. A pure function of the epoch (a plain function, so the scheduler's
    saved state never carries an old length into an extended run)."""
    bounds = [0, *restarts, epochs]

    def factor(epoch: int) -> float:
        start = max(b for b in bounds[:-1] if b <= epoch)
        end = bounds[bounds.index(start) + 1]
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - start) / (end - start)))

    return factor


def model_meta(config: RunConfig, model: nn.Module, train_ds, epoch: int, metrics: list[dict]) -> dict[str, Any]:
    return {
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "dataset": config.data.dataset,
        "data": train_ds.describe(),
        "class_names": list(getattr(train_ds, "class_names", [])),
        "epochs_done": epoch,
        "test_accuracy": metrics[-1]["test_accuracy"] if metrics else None,
        "config": config.model_dump(mode="json"),
    }


def _initialise_from(model: nn.Module, source: str, console: Console) -> None:
    """Copy matching weights of a trained run into ``model`` (fine-tuning); report what did not match."""
    state = checkpoint.load_weights(source, checkpoint.read_meta(source).get(checkpoint.CHECKSUM))
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise NoraError(f"model.init_from {source}: none of its weights fit this model")
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    console.print(f"initialised {len(usable)} tensors from {source}"
                  + (f"; {len(skipped)} keep their fresh values ({', '.join(skipped[:4])}{', ...' if len(skipped) > 4 else ''})"
                     if skipped else ""))


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before its folder is touched."""

    tree: SeedTree
    device: torch.device
    schedule: Any
    objective: Any
    spec: Any
    train_ds: Any
    test_ds: Any
    model: nn.Module


def prepare(config: RunConfig, console: Console, data: tuple[Any, Any] | None = None) -> Prepared:
    """Validate ``config`` by building it: schedule, objective, noise specification, data, model and
    the noise on that model (sites, map lengths, hardware). Raises one NoraError line; writes nothing."""
    from nora.models import build_model

    tree = SeedTree(config.seed)
    device = resolve_device(config.train.device)
    schedule = schedule_from_config(config.train.noise_schedule, config.train_noise, config.train.epochs, config.seed)
    objective = make_objective(config.train.objective.name, seed=tree.child("train", "objective").seed() % (2**31),
                               **config.train.objective.options)
    spec = noise_spec(config.train_noise, training=True)
    train_ds, test_ds = data if data is not None else load_data(config.data)
    with torch_global_seeded(tree.child("train", "init")):
        model = build_model(config.model.arch, input_shape=tuple(train_ds.input_shape),
                            num_classes=train_ds.num_classes, **config.model.kwargs)
    if config.model.init_from:
        _initialise_from(model, config.model.init_from, console)
    model.to(device)
    if config.train_noise is not None and config.train_noise.is_active():
        NoiseInjector(model, spec, when="train", example_input=train_ds.x[:2].to(device)).detach()
    else:
        spec = None
    return Prepared(tree, device, schedule, objective, spec, train_ds, test_ds, model)


def train(
    config: RunConfig,
    *,
    console: Console | None = None,
    stop_after_epochs: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    extend: bool = False,
) -> RunResult:
    """Train (or resume) the run described by ``config``; returns the final model and metrics.

    ``extend``: ``config`` lengthens the run already in its folder (see ``extended``); its saved
    config is replaced by the longer one.
    """
    console = console or Console(stderr=True)
    run_dir = config.run_dir()
    _check_run_dir(run_dir, config, extend)
    ready = prepare(config, console)
    if extend and getattr(ready.objective, "follows_training_length", False):
        raise NoraError(f"{run_dir}: the objective {config.train.objective.name!r} anneals over the whole training, "
                        "so extending it would change the epochs already trained; train a new run")
    with RunLock(run_dir):
        if extend:
            atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
            console.print(f"extending {run_dir} to {config.train.epochs} epochs")
        return _train_locked(config, console, run_dir, ready.tree, ready.device, ready.model, ready.spec,
                             ready.schedule, ready.objective, ready.train_ds, ready.test_ds, stop_after_epochs,
                             on_epoch)


def _train_locked(config, console, run_dir, tree, device, model, spec, schedule, objective, train_ds, test_ds,
                  stop_after_epochs, on_epoch) -> RunResult:
    from nora.data import make_loader

    optimizer, scheduler = make_optimizer(config, model)
    if config.train.clamp_weights:
        clamp_after_step(optimizer, model, *config.train.clamp_weights)
    train_loader = make_loader(train_ds, batch_size=config.data.batch_size, shuffle=True,
                               augment=config.data.augment, seed=tree.child("data", "order").seed() % (2**63))
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    state = checkpoint.load_state(run_dir)
    if state is not None:
        checkpoint.load_into(model, state["model"], str(run_dir / checkpoint.STATE))
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        saved = state.get("scheduler")
        if scheduler is not None and saved is not None:
            if "lr_lambdas" in saved:
                scheduler.load_state_dict(saved)
            else:  # saved by a nora whose cosine was torch's recursive one: only the epoch carries over
                scheduler.last_epoch = start_epoch
            # the rate of the next epoch from this run's schedule (an extension has a longer one)
            for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * scheduler.lr_lambdas[0](start_epoch)
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        metrics = list(state["metrics"])
        console.print(f"resuming {run_dir} after epoch {start_epoch}/{config.train.epochs}")
    else:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
    # Attached after the saved state is loaded: weight noise re-parametrizes the weights it perturbs.
    handle = None if spec is None else NoiseInjector(model, spec, seed=tree.child("train", "epoch", start_epoch),
                                                     when="train", example_input=train_ds.x[:2].to(device))
    try:
        return _epochs(config, console, run_dir, tree, device, model, handle, schedule, objective, train_ds, test_ds,
                       optimizer, scheduler, train_loader, metrics, start_epoch, stop_after_epochs, on_epoch)
    finally:
        if handle is not None:
            handle.detach()


def _epochs(config, console, run_dir, tree, device, model, handle, schedule, objective, train_ds, test_ds, optimizer,
            scheduler, train_loader, metrics, start_epoch, stop_after_epochs, on_epoch) -> RunResult:
    if schedule is not None:
        console.print(f"training-noise schedule: {schedule.describe()}")
    last_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, start_epoch + stop_after_epochs)
    relative = handle is not None and handle.spec.relative is not None
    with Reporter(console, unit="batches", enabled=config.train.progress) as progress:
        for epoch in range(start_epoch, last_epoch):
            train_loader.set_epoch(epoch)
            if handle is not None:
                handle.reseed(tree.child("train", "epoch", epoch))
                if relative:  # relative sigma follows the weights: recalibrated on clean activations each epoch
                    window = train_ds.x[:handle.spec.calibration_samples]
                    handle.calibrate(window[i:i + 500].to(device) for i in range(0, len(window), 500))
            progress.start(f"epoch {epoch + 1}/{config.train.epochs}", len(train_loader))
            model.train()
            started = time.perf_counter()
            # (speed) running sums stay on the device: no host copy of the loss at every step
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            scale_sum = torch.zeros((), dtype=torch.float64, device=device)
            seen = 0
            # Dropout and other torch-internal draws: a forked global stream, seeded per epoch and restored after.
            with torch_global_seeded(tree.child("train", "torch", epoch), [device] if device.type == "cuda" else []):
                for batch_index, (xb, yb) in enumerate(train_loader):
                    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                    if schedule is not None:
                        handle.sigma_scale = schedule.scale(epoch, batch_index, len(yb))
                        if isinstance(handle.sigma_scale, torch.Tensor):
                            handle.sigma_scale = handle.sigma_scale.to(device)
                        level = torch.as_tensor(handle.sigma_scale, device=device)
                        scale_sum += level.float().mean().double() * len(yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss = objective.loss(model, xb, yb, StepContext(epoch, batch_index, len(train_loader),
                                                                     config.train.epochs))
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach().double() * len(yb)
                    seen += len(yb)
                    progress.advance(loss=lambda: float(loss_sum) / seen)
            if scheduler is not None:
                scheduler.step()
            seconds = time.perf_counter() - started
            row = {
                "epoch": epoch + 1,
                "train_loss": float(loss_sum) / max(seen, 1),
                "test_accuracy": clean_accuracy(model, test_ds.x, test_ds.y, device=device),
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": seconds,
            }
            if schedule is not None:
                row["noise_scale"] = float(scale_sum) / max(seen, 1)
            metrics.append(row)
            _save_epoch(run_dir, config, model, optimizer, scheduler, train_ds, epoch + 1, metrics)
            console.print(
                f"epoch {row['epoch']:>3}/{config.train.epochs}  loss {row['train_loss']:.4f}  "
                f"test acc {row['test_accuracy']:.4f}  ({seconds:.1f} s)"
            )
            if on_epoch is not None:
                on_epoch(row)
    if not metrics:
        raise NoraError(f"{run_dir}: no epoch finished")
    if start_epoch >= config.train.epochs:
        console.print(f"{run_dir} is already trained ({config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''})")
    model.eval()
    meta = model_meta(config, model, train_ds, len(metrics), metrics)
    return RunResult(run_dir, metrics, start_epoch, model, meta)


def _save_epoch(run_dir, config, model, optimizer, scheduler, train_ds, epoch, metrics) -> None:
    state = {
        "model": checkpoint.plain_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "metrics": metrics,
    }
    checkpoint.save_state(run_dir, state)
    checkpoint.save_model(run_dir, model, model_meta(config, model, train_ds, epoch, metrics))
    write_metrics(run_dir, metrics)
