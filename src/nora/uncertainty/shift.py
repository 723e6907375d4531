"""Data shift at graded severities for calibration under shift: Gaussian pixel noise and Gaussian blur.

Severities 1..5 follow the spirit of CIFAR-10-C: pixel-noise standard deviations and blur widths that
grow from barely visible to heavy. Noise is in pixel units (converted with the data set's stored
normalisation), drawn from a seed-tree generator.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from nora.errors import NoraError
from nora.seeds import SeedTree

NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
BLUR_SIGMA = (0.5, 1.0, 1.5, 2.0, 3.0)
KINDS = ("gaussian-noise", "blur")


def parse_shift(text: str) -> tuple[str, list[int]]:
    """``gaussian-noise:1..5`` / ``blur:2`` / ``blur:1,3`` -> (kind, severities)."""
    kind, _, levels = str(text).partition(":")
    if kind not in KINDS:
        raise NoraError(f"unknown shift {kind!r}; choose {', '.join(KINDS)} (e.g. gaussian-noise:1..5)")
    levels = levels or "1..5"
    match = re.fullmatch(r"(\d)\.\.(\d)", levels)
    try:
        severities = list(range(int(match[1]), int(match[2]) + 1)) if match else [int(v) for v in levels.split(",")]
    except ValueError:
        raise NoraError(f"shift severities must look like 1..5 or 1,3,5, got {levels!r}") from None
    if not severities or any(not 1 <= s <= 5 for s in severities):
        raise NoraError(f"shift severities must lie in 1..5, got {levels!r}")
    return kind, severities


def _pixel_scale(x: torch.Tensor, std) -> torch.Tensor:
    if std is None:
        return torch.ones(1, dtype=x.dtype)
    return 1.0 / torch.tensor(std, dtype=x.dtype).view(1, -1, *([1] * (x.ndim - 2)))


def shifted(x: torch.Tensor, kind: str, severity: int, *, std=None, seed: int = 0) -> torch.Tensor:
    """A shifted copy of ``x`` (``std``: the per-channel normalisation already applied to ``x``)."""
    if kind == "gaussian-noise":
        g = SeedTree(seed).child("shift", kind, severity).generator()
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
        return x + noise * NOISE_STD[severity - 1] * _pixel_scale(x, std)
    if kind == "blur":
        if x.ndim != 4:
            raise NoraError(f"blur needs images [N, C, H, W], got inputs of shape {tuple(x.shape[1:])}")
        s = BLUR_SIGMA[severity - 1]
        radius = max(1, int(round(3 * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-t ** 2 / (2 * s * s))
        k = k / k.sum()
        c = x.shape[1]
        pad = F.pad(x, (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    raise NoraError(f"unknown shift {kind!r}; choose {', '.join(KINDS)}")
