"""Training objectives: what one optimisation step minimises.

The trainer asks its objective for the loss of a batch; plain classification is cross-entropy.
Objectives are named in configs (``train.objective.name``) and looked up here lazily, so a package
that defines one (e.g. repulsive ensembles) is imported only when a run asks for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Protocol

import torch
from torch import nn

from nora.errors import NoraError


@dataclasses.dataclass
class StepContext:
    """Where in training a batch falls (schedules such as repulsion annealing read it)."""

    epoch: int
    batch_index: int
    batches_per_epoch: int
    epochs: int


class Objective(Protocol):
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, context: StepContext) -> torch.Tensor:
        ...


class CrossEntropy:
    """Mean cross-entropy of the model's logits."""

    def __init__(self) -> None:
        self._criterion = nn.CrossEntropyLoss()

    def loss(self, model, x, y, context):
        return self._criterion(model(x), y)


#: name -> "module:factory"; factories take the objective's options as keyword arguments.
OBJECTIVES: dict[str, str] = {
    "cross_entropy": "nora.train.objectives:CrossEntropy",
    "heads_nll": "nora.uncertainty.objectives:HeadsNLL",
    "repulsive": "nora.uncertainty.objectives:Repulsive",
}


def make_objective(name: str = "cross_entropy", *, seed: int | None = None, **options: Any) -> Objective:
    """The named objective; one that takes a ``seed`` gets the run's (a seed-tree child) unless set."""
    if name not in OBJECTIVES:
        raise NoraError(f"unknown training objective {name!r}; choose one of {', '.join(sorted(OBJECTIVES))}")
    module, _, attr = OBJECTIVES[name].partition(":")
    factory = getattr(importlib.import_module(module), attr)
    if seed is not None and "seed" not in options and "seed" in inspect.signature(factory).parameters:
        options["seed"] = seed
    try:
        return factory(**options)
    except TypeError as exc:
        raise NoraError(f"objective {name!r}: {exc}") from None
