"""Short fine-tuning of the chosen compressed model (fake quantisation passes straight-through gradients)."""

from __future__ import annotations

import torch
from torch import nn

from nora.data import make_loader
from nora.seeds import SeedTree


def retrain(model: nn.Module, train, *, epochs: int, lr: float, seed: SeedTree, batch_size: int = 128) -> nn.Module:
    """SGD with momentum and a cosine decay over ``epochs`` on ``train``; returns the model in eval mode."""
    if epochs <= 0:
        return model.eval()
    loader = make_loader(train, batch_size=batch_size, shuffle=True, seed=seed.child("retrain", "shuffle").seed())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = max(epochs * len(loader), 1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            scheduler.step()
    return model.eval()
