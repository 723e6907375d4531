"""One sweep point, run inside a worker: a normal ``nora.train.train`` run, then its evaluation.

``run_point`` takes and returns plain JSON-able dicts (they cross process and machine boundaries)
and never raises for a problem of the point itself: a failure comes back as a record with the
error, so one bad point never stops the others.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch
from torch import nn

from nora.errors import NoraError


def task_for(point, evaluate) -> dict[str, Any]:
    """What a worker needs to run ``point`` (a ``nora.sweep.spec.Point``)."""
    return {"id": point.id, "index": point.index, "values": point.values,
            "config": point.config.model_dump(mode="json"), "evaluate": evaluate.model_dump(mode="json")}


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    record = {"id": task["id"], "index": task["index"], "values": task["values"]}
    try:
        torch.set_num_threads(1)
        result = _train_and_evaluate(task)
    except NoraError as exc:
        return {**record, "status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    except Exception as exc:  # a bug or a broken environment: keep the evidence, keep the sweep going
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tail,
                "seconds": time.perf_counter() - started}
    result["seconds"] = time.perf_counter() - started
    return {**record, "status": "ok", "result": result}


def _train_and_evaluate(task: dict[str, Any]) -> dict[str, Any]:
    from rich.console import Console

    from nora.config import parse_config
    from nora.sweep.spec import EvaluateSpec
    from nora.train.trainer import train

    config = parse_config(task["config"], f"sweep point {task['id']}")
    evaluate = EvaluateSpec.model_validate(task["evaluate"])
    run = train(config, console=Console(quiet=True))
    return evaluate_point(run.model, config, evaluate, run.test_accuracy, len(run.metrics))


def evaluate_point(model: nn.Module, config, evaluate, test_accuracy: float, epochs: int) -> dict[str, Any]:
    """Clean accuracy, accuracy under the training noise, optional curve and walk, weight statistics.

    Every accuracy comes from the measurement engine with the point's seed, so a point's numbers
    equal ``nora eval`` / ``curve`` / ``walk`` run on its checkpoint with the same seed.
    """
    from nora.train.setup import load_data

    _, test = load_data(config.data)
    out: dict[str, Any] = {"test_accuracy": test_accuracy, "epochs": epochs, "num_classes": test.num_classes,
                           "run_dir": str(config.run_dir())}
    noise_cfg = config.train_noise
    if evaluate.at_train_noise and noise_cfg is not None and noise_cfg.is_active():
        out["noisy"] = accuracy_under(model, test, config, noise_cfg, evaluate.repeats)
    if evaluate.curve is not None:
        out["curve"] = _curve(model, test, config, evaluate)
    if evaluate.walk is not None:
        out["walk"] = _walk(model, test, config, evaluate)
    if evaluate.weights:
        out["weights"] = weight_stats(model)
    return out


def accuracy_under(model: nn.Module, test, config, noise_cfg, repeats: int) -> dict[str, Any]:
    """Accuracy with the configured noise (activation and weight noise) active, R independent draws."""
    from nora.measure import Engine
    from nora.train.setup import noise_spec

    with Engine(model, test.x, test.y, noise_spec(noise_cfg), seed=config.seed, repeats=repeats) as engine:
        (row,) = engine.summary()
        description = engine.describe()
    return {"sigma": noise_cfg.sigma, **row, "measurement": description}


def _curve(model, test, config, evaluate) -> dict[str, Any]:
    from nora.analysis.curves import accuracy_curve, log_grid
    from nora.train.setup import noise_spec

    spec = evaluate.curve
    curve = accuracy_curve(model, test.x, test.y, noise_spec(spec.noise), log_grid(*spec.sigma_range, spec.per_decade),
                           num_classes=test.num_classes, repeats=evaluate.repeats, seed=config.seed)
    return curve.to_dict()


def _walk(model, test, config, evaluate) -> dict[str, Any]:
    from nora.analysis.walk import walk
    from nora.train.setup import noise_spec

    spec = evaluate.walk
    result = walk(model, test.x, test.y, noise_spec(spec.noise), num_classes=test.num_classes, sites=spec.sites,
                  sigma_range=spec.sigma_range, repeats=evaluate.repeats, seed=config.seed)
    return {"clean_accuracy": result.clean, "seconds": result.seconds,
            "sites": [{"index": s.site.index, "name": s.site.name, "path": s.path, **s.midpoint.to_dict()}
                      for s in result.sites]}


def weight_stats(model: nn.Module) -> dict[str, Any]:
    """max |w| and mean |w| over all Linear/Conv weights, and per layer."""
    from nora.noise.weight import WEIGHT_LAYERS

    layers = {name: m.weight.detach() for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    if not layers:
        return {"max_abs": None, "mean_abs": None, "layers": {}}
    flat = torch.cat([w.abs().flatten() for w in layers.values()])
    return {"max_abs": float(flat.max()), "mean_abs": float(flat.mean()),
            "layers": {n: {"max_abs": float(w.abs().max()), "mean_abs": float(w.abs().mean())}
                       for n, w in layers.items()}}
