"""Sensitivity of each layer to each candidate setting: KL(reference || compressed) on a small subset.

Only the one layer is compressed at a time. The samples enter the agents' state (methods.md
section 12) and drive the greedy baseline. Results are cached in a JSON file keyed by the layer and
the setting, so a resumed search and a second agent on the same checkpoint reuse them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nora.compress.actions import FP32, LayerInfo, LayerPolicy, apply_policy
from nora.errors import NoraError
from nora.io import atomic_write_json

#: Candidate settings per layer: (sparsity, weight bits, activation bits).
PRUNE_SAMPLES = (0.25, 0.5, 0.75)
QUANT_SAMPLES = (2, 4, 8)


def settings(mode: str) -> list[tuple[float, int, int]]:
    out = []
    if mode in ("joint", "prune"):
        out += [(s, FP32, FP32) for s in PRUNE_SAMPLES]
    if mode in ("joint", "quant"):
        out += [(0.0, b, b) for b in QUANT_SAMPLES]
    return out


@torch.no_grad()
def kl_divergence(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over samples of KL(p_ref || p) between the softmax outputs (>= 0: float rounding of a
    near-zero divergence is clipped, so an unchanged output scores exactly 0)."""
    return max(0.0, float(F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference_logits, 1), log_target=True,
                                   reduction="batchmean")))


def layer_sensitivity(model: nn.Module, input_shape: Sequence[int], layers: Sequence[LayerInfo],
                      x: torch.Tensor, mode: str, *, round_to: int = 8,
                      cache_path: str | Path | None = None) -> dict[str, list[float]]:
    """For every layer, the KL divergence at each candidate setting of ``mode`` (cached)."""
    cache: dict[str, float] = {}
    path = Path(cache_path) if cache_path else None
    if path and path.exists():
        try:
            cache = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise NoraError(f"sensitivity cache {path} is not valid JSON; delete it to recompute") from None
    with torch.no_grad():
        reference = model.eval()(x)
    out = {}
    changed = False
    for layer in layers:
        values = []
        for sparsity, w_bits, a_bits in settings(mode):
            key = f"{layer.name}|s{sparsity}|w{w_bits}a{a_bits}|r{round_to}|n{len(x)}"
            if key not in cache:
                if sparsity > 0 and not layer.prunable:
                    cache[key] = 0.0
                else:
                    policy = [LayerPolicy(layer.name, sparsity, w_bits, a_bits)]
                    _, compressed = apply_policy(model, input_shape, policy, x, round_to)
                    with torch.no_grad():
                        cache[key] = kl_divergence(reference, compressed(x))
                changed = True
            values.append(cache[key])
        out[layer.name] = values
    if path and changed:
        atomic_write_json(path, cache)
    return out
