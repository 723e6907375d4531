"""Clean top-1 accuracy over tensors, chunked: the bottom of every measurement."""

from __future__ import annotations

import torch
from torch import nn

#: Samples per forward call; every command evaluates in these chunks, so noise draws line up.
DEFAULT_CHUNK = 500


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = DEFAULT_CHUNK,
                   device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of ``model`` in eval mode on ``x``/``y`` (moved to ``device`` chunk by chunk)."""
    was_training = model.training
    model.eval()
    target = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    correct = torch.zeros((), dtype=torch.int64, device=target)
    try:
        for start in range(0, len(y), chunk_size):
            xb = x[start:start + chunk_size].to(target, non_blocking=True)
            yb = y[start:start + chunk_size].to(target, non_blocking=True)
            correct += (model(xb).argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return int(correct) / max(len(y), 1)
