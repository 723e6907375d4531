"""Clean and noisy training with per-epoch checkpoints that survive a kill.

Every finished epoch writes one ``state.pt`` (weights, optimizer, scheduler, metrics) atomically,
so a killed run resumes at the first unfinished epoch with nothing lost. Each epoch reseeds data
order, dropout and noise from (seed, epoch), so a resumed run computes the same numbers as one
that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from nora.analysis.evaluate import accuracy
from nora.config import RunConfig, dump_config, parse_config
from nora.errors import NoraError
from nora.io import atomic_write_text
from nora.noise.weight import clamp_after_step
from nora.train import checkpoint
from nora.train.metrics import write_metrics
from nora.train.schedules import schedule_from_config
from nora.train.setup import attach_noise, load_data

CONFIG_FILE = "config.yaml"
# Keys that change how a run is executed, not what it computes.
_EXECUTION_KEYS = {("train", "progress"), ("train", "threads"), ("data", "root"), ("data", "cache_dir"), ("data", "download")}


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


def _identity(config: RunConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for section, key in _EXECUTION_KEYS:
        data.get(section, {}).pop(key, None)
    return data


def _check_run_dir(run_dir: Path, config: RunConfig) -> None:
    existing = run_dir / CONFIG_FILE
    if existing.exists():
        import yaml

        try:
            previous = parse_config(yaml.safe_load(existing.read_text()), str(existing))
        except (NoraError, Exception) as exc:
            raise NoraError(f"{run_dir} holds an unreadable run config ({exc}); choose another run name") from None
        if _identity(previous) != _identity(config):
            raise NoraError(
                f"{run_dir} already holds a run with a different config; choose another name (name: ...) "
                "or move the old run away"
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
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs) if t.scheduler == "cosine" else None
    return optimizer, scheduler


def model_meta(config: RunConfig, model: nn.Module, train_ds, epoch: int, metrics: list[dict]) -> dict[str, Any]:
    return {
        "arch": model.arch,
        "arch_kwargs": model.arch_kwargs,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "dataset": config.data.dataset,
        "class_names": list(getattr(train_ds, "class_names", [])),
        "epochs_done": epoch,
        "test_accuracy": metrics[-1]["test_accuracy"] if metrics else None,
        "config": config.model_dump(mode="json"),
    }


def _progress(console: Console, enabled: bool) -> Progress | contextlib.nullcontext:
    if not enabled:
        return contextlib.nullcontext()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def train(
    config: RunConfig,
    *,
    console: Console | None = None,
    stop_after_epochs: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train (or resume) the run described by ``config``; returns the final model and metrics."""
    from nora.models import build_model

    console = console or Console(stderr=True)
    run_dir = config.run_dir()
    _check_run_dir(run_dir, config)
    schedule = schedule_from_config(config.train.noise_schedule, config.train_noise, config.train.epochs, config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    train_ds, test_ds = load_data(config.data)
    from nora.data import make_loader

    torch.manual_seed(config.seed)
    model = build_model(
        config.model.arch, input_shape=tuple(train_ds.input_shape), num_classes=train_ds.num_classes, **config.model.kwargs
    )
    optimizer, scheduler = make_optimizer(config, model)
    if config.train.clamp_weights:
        clamp_after_step(optimizer, model, *config.train.clamp_weights)
    train_loader = make_loader(train_ds, batch_size=config.data.batch_size, shuffle=True,
                               augment=config.data.augment, seed=config.seed)
    test_loader = make_loader(test_ds, batch_size=config.data.test_batch_size, shuffle=False)

    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    state = checkpoint.load_state(run_dir)
    if state is not None:
        checkpoint.load_into(model, state["model"], str(run_dir / checkpoint.STATE))
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        metrics = list(state["metrics"])
        console.print(f"resuming {run_dir} after epoch {start_epoch}/{config.train.epochs}")
    else:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))

    injector, weight_noise = attach_noise(
        model, config.train_noise, when="train", seed=config.seed, example_input=train_ds.x[:2]
    )
    if schedule is not None:
        console.print(f"training-noise schedule: {schedule.describe()}")
    criterion = nn.CrossEntropyLoss()
    last_epoch = config.train.epochs if stop_after_epochs is None else min(config.train.epochs, start_epoch + stop_after_epochs)
    try:
        with _progress(console, config.train.progress) as progress:
            for epoch in range(start_epoch, last_epoch):
                torch.manual_seed(config.seed * 1009 + epoch)
                train_loader.set_epoch(epoch)
                if injector is not None:
                    injector.reseed(config.seed * 7919 + epoch)
                task = progress.add_task(f"epoch {epoch + 1}/{config.train.epochs}", total=len(train_loader), loss=0.0) if progress else None
                model.train()
                started = time.perf_counter()
                loss_sum, seen, scale_sum = 0.0, 0, 0.0
                for batch_index, (xb, yb) in enumerate(train_loader):
                    if schedule is not None:
                        injector.sigma_scale = schedule.scale(epoch, batch_index, len(yb))
                        scale_sum += float(torch.as_tensor(injector.sigma_scale).mean()) * len(yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(model(xb), yb)
                    loss.backward()
                    optimizer.step()
                    loss_sum += float(loss.detach()) * len(yb)
                    seen += len(yb)
                    if progress:
                        progress.update(task, advance=1, loss=loss_sum / seen)
                if progress:
                    progress.remove_task(task)
                if scheduler is not None:
                    scheduler.step()
                seconds = time.perf_counter() - started
                row = {
                    "epoch": epoch + 1,
                    "train_loss": loss_sum / max(seen, 1),
                    "test_accuracy": accuracy(model, test_loader),
                    "lr": optimizer.param_groups[0]["lr"],
                    "seconds": seconds,
                }
                if schedule is not None:
                    row["noise_scale"] = scale_sum / max(seen, 1)
                metrics.append(row)
                _save_epoch(run_dir, config, model, optimizer, scheduler, train_ds, epoch + 1, metrics)
                console.print(
                    f"epoch {row['epoch']:>3}/{config.train.epochs}  loss {row['train_loss']:.4f}  "
                    f"test acc {row['test_accuracy']:.4f}  ({seconds:.1f} s)"
                )
                if on_epoch is not None:
                    on_epoch(row)
    finally:
        if injector is not None:
            injector.detach()
        if weight_noise is not None:
            weight_noise.detach()
    if not metrics:
        raise NoraError(f"{run_dir}: no epoch finished")
    if start_epoch >= config.train.epochs:
        console.print(f"{run_dir} is already trained ({config.train.epochs} epochs)")
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
