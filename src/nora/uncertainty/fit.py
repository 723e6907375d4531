"""A minimal in-memory training loop for studies that train many small models (active learning, baselines).

Run directories, resume and reporting belong to ``nora train``; this loop only fits a model to
tensors with an objective, reproducibly: model initialisation and dropout draw from torch's global
generator *inside* ``torch.random.fork_rng``, seeded from the seed tree, so the caller's global
state is left exactly as it was.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from nora.data import ArrayDataset, make_loader
from nora.seeds import SeedTree, torch_global_seeded as seeded
from nora.train.objectives import StepContext


def build_seeded(name: str, seed: SeedTree | int, **kwargs: Any) -> nn.Module:
    from nora.models import build_model

    with seeded(SeedTree.of(seed).child("init")):
        return build_model(name, **kwargs)


def fit(model: nn.Module, objective, data: ArrayDataset, *, epochs: int, batch_size: int = 128, lr: float = 1e-3,
        seed: int = 0, on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam + cosine schedule for ``epochs``; returns the seconds each epoch took."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=seed)
    seconds = []
    with seeded(SeedTree(seed).child("fit")):
        for epoch in range(epochs):
            model.train()
            loader.set_epoch(epoch)
            started = time.perf_counter()
            for index, (xb, yb) in enumerate(loader):
                optimizer.zero_grad(set_to_none=True)
                loss = objective.loss(model, xb, yb, StepContext(epoch, index, len(loader), epochs))
                loss.backward()
                optimizer.step()
            scheduler.step()
            seconds.append(time.perf_counter() - started)
            if on_epoch is not None:
                on_epoch(epoch, float(loss.detach()))
    model.eval()
    return seconds
