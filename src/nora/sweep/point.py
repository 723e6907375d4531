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
    """Clean accuracy, accuracy under the training noise, optional curve and walk, weight statistics."""
    from nora.train.setup import load_data

    _, test = load_data(config.data)
    out: dict[str, Any] = {"test_accuracy": test_accuracy, "epochs": epochs, "num_classes": model.num_classes,
                           "run_dir": str(config.run_dir())}
    noise_cfg = config.train_noise
    if evaluate.at_train_noise and noise_cfg is not None and _has_noise(noise_cfg):
        out["noisy"] = accuracy_under(model, test, config, noise_cfg, evaluate.repeats)
    if evaluate.curve is not None:
        out["curve"] = _curve(model, test, config, evaluate)
    if evaluate.walk is not None:
        out["walk"] = _walk(model, test, config, evaluate)
    if evaluate.weights:
        out["weights"] = weight_stats(model)
    return out


def _has_noise(cfg) -> bool:
    return cfg.sigma > 0 or bool(cfg.sigmas) or (cfg.weight is not None and cfg.weight.sigma > 0)


def accuracy_under(model: nn.Module, test, config, noise_cfg, repeats: int) -> dict[str, Any]:
    """Accuracy with the configured noise (activation and weight noise) active, R independent draws."""
    from nora.analysis.evaluate import accuracy
    from nora.analysis.stats import summarize
    from nora.data import make_loader
    from nora.train.setup import attach_noise

    loader = make_loader(test, batch_size=config.data.test_batch_size, shuffle=False)
    values = []
    for r in range(repeats):
        injector, weights = attach_noise(model, noise_cfg, when="eval", seed=config.seed + r,
                                         example_input=test.x[:2])
        try:
            if injector is not None and noise_cfg.relative is not None:
                injector.calibrate((xb for _, (xb, _) in zip(range(4), loader)), noise_cfg.relative)
            values.append(accuracy(model, loader))
        finally:
            for handle in (injector, weights):
                if handle is not None:
                    handle.detach()
    return {"sigma": noise_cfg.sigma, **summarize(values), "values": values}


def _curve(model, test, config, evaluate) -> dict[str, Any]:
    from nora.analysis.curves import accuracy_curve, log_grid
    from nora.train.setup import injector_options, noise_model

    spec = evaluate.curve
    options = injector_options(spec.noise)
    sites = options.pop("sites")
    curve = accuracy_curve(model, test.x, test.y, noise_model(spec.noise), log_grid(*spec.sigma_range, spec.per_decade),
                           num_classes=test.num_classes, sites=sites, injector_options=options,
                           repeats=evaluate.repeats, seed=config.seed)
    return curve.to_dict()


def _walk(model, test, config, evaluate) -> dict[str, Any]:
    from nora.analysis.walk import walk
    from nora.train.setup import noise_model

    spec = evaluate.walk
    result = walk(model, test.x, test.y, noise_model(spec.noise), num_classes=test.num_classes, sites=spec.sites,
                  sigma_range=spec.sigma_range, repeats=evaluate.repeats, seed=config.seed,
                  site_types=spec.noise.site_types, include_input=spec.noise.include_input)
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
