"""Pool-based active learning with disentangled uncertainty: acquire by epistemic, aleatoric or random.

Each round trains a fresh multi-member model on the labelled set, scores the unlabelled pool, and
labels the ``per_round`` highest-scoring inputs. Epistemic acquisition (mutual information) asks for
what the members disagree on; aleatoric (expected entropy) for what every member finds ambiguous,
which more labels do not resolve: the research's point is that the first should learn faster.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from nora.data import ArrayDataset
from nora.errors import NoraError
from nora.seeds import SeedTree
from nora.uncertainty.evaluate import member_probs
from nora.uncertainty.fit import build_seeded, fit
from nora.uncertainty.metrics import decompose

ACQUISITIONS = ("epistemic", "aleatoric", "random")


def acquire(scores: torch.Tensor | None, pool: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (into ``pool``) of the ``k`` top scores, or ``k`` at random when ``scores`` is None."""
    if scores is None:
        return pool[torch.randperm(len(pool), generator=generator)[:k]]
    return pool[scores.argsort(descending=True)[:k]]


def active_learning(
    train: ArrayDataset,
    test: ArrayDataset,
    *,
    arch: str = "multihead",
    model_kwargs: dict[str, Any] | None = None,
    objective: str = "heads_nll",
    objective_options: dict[str, Any] | None = None,
    acquisitions: Sequence[str] = ACQUISITIONS,
    initial: int = 20,
    per_round: int = 20,
    rounds: int = 5,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """Learning curves: per acquisition, one row per round with labelled count and test accuracy.

    Every round trains about ``steps`` optimiser steps from a fresh initialisation (the same one for
    every acquisition, so the curves differ by the labels chosen alone).
    """
    from nora.train.objectives import make_objective

    bad = sorted(set(acquisitions) - set(ACQUISITIONS))
    if bad:
        raise NoraError(f"unknown acquisition {bad[0]!r}; choose from {', '.join(ACQUISITIONS)}")
    if initial < 1 or per_round < 1 or rounds < 1 or initial + per_round * rounds > len(train):
        raise NoraError(f"active learning needs initial, per_round, rounds >= 1 and at most {len(train)} labels in all")
    tree = SeedTree(seed).child("active")
    start = torch.randperm(len(train), generator=tree.child("initial").generator())[:initial]
    kwargs = {"input_shape": train.input_shape, "num_classes": train.num_classes, **(model_kwargs or {})}
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in acquisitions:
        labelled = start.clone()
        rows = []
        for rnd in range(rounds + 1):
            model = build_seeded(arch, tree.child("model", rnd), **kwargs)
            obj = make_objective(objective, **(objective_options or {}))
            # a fixed number of optimiser steps per round, so small labelled sets are not under-trained
            epochs = max(1, math.ceil(steps * batch_size / len(labelled)))
            fit(model, obj, train.subset(labelled), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + rnd)
            probs = member_probs(model, test.x)
            accuracy = float((probs.mean(1).argmax(1) == test.y).double().mean())
            rows.append({"round": rnd, "labelled": len(labelled), "accuracy": accuracy})
            if rnd == rounds:
                break
            mask = torch.ones(len(train), dtype=torch.bool)
            mask[labelled] = False
            pool = mask.nonzero().view(-1)
            scores = None
            if name != "random":
                parts = decompose(member_probs(model, train.x[pool]))
                scores = parts[name]
            labelled = torch.cat([labelled, acquire(scores, pool, per_round, tree.child("random", rnd).generator())])
        curves[name] = rows
    return curves


def plot_curves(curves: dict[str, list[dict[str, Any]]], path, title: str = "") -> Any:
    from nora.analysis.plots import new_figure, save_figure

    fig = new_figure((5.6, 3.8))
    ax = fig.subplots()
    for name, rows in curves.items():
        ax.plot([r["labelled"] for r in rows], [r["accuracy"] for r in rows], "o-", label=name)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "active learning")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
