"""Argument checks, layer blocks and the dry run that sizes classifier heads, shared by all models.

Model arguments come from users (configs, the CLI), so every bad value becomes a one-line
``NoraError`` here instead of a torch traceback from deep inside a layer. Every layer that should be
a noise site is a module object (``nn.ReLU()``, ``nn.Flatten()``), never a functional call.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from nora.errors import NoraError


def as_shape(owner: str, value: Any) -> tuple[int, ...]:
    """An input shape without the batch dimension: a non-empty sequence of positive ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise NoraError(f"{owner}: input_shape must be a list of positive integers, got {value!r}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise NoraError(f"{owner}: input_shape must be a list of positive integers, got {list(value)!r}")
    return tuple(value)


def image_shape(owner: str, value: Any) -> tuple[int, int, int]:
    """An input shape that must be (channels, height, width)."""
    shape = as_shape(owner, value)
    if len(shape) != 3:
        raise NoraError(f"{owner}: input_shape must be (channels, height, width), got {shape}")
    return shape


def positive_int(owner: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NoraError(f"{owner}: {option} must be a positive integer, got {value!r}")
    return value


def positive_ints(owner: str, option: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise NoraError(f"{owner}: {option} must be a list of positive integers, got {value!r}")
    return tuple(positive_int(owner, option, v) for v in value)


def flag(owner: str, option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NoraError(f"{owner}: {option} must be true or false, got {value!r}")
    return value


def fraction(owner: str, option: str, value: Any) -> float:
    """A probability in [0, 1), e.g. a dropout rate."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise NoraError(f"{owner}: {option} must be a number in [0, 1), got {value!r}")
    return float(value)


def positive_float(owner: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise NoraError(f"{owner}: {option} must be a positive number, got {value!r}")
    return float(value)


def choice(owner: str, option: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise NoraError(f"{owner}: {option} must be one of {', '.join(choices)}, got {value!r}")
    return value


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose 2x2, stride-2 inference forward on CPU is the maximum of four strided
    views of the input: the same values, in a tenth of the time of torch's CPU kernel, which also
    finds and stores the argmax indices when nothing needs them (it took 40-55 % of LeNet-5's clean
    forward at batch 1,000). While autograd records, under tracing, scripting, compiling or export,
    and for any other settings it is torch's op, so gradients and exported graphs are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._strided(x):
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))

    def _strided(self, x: Any) -> bool:
        return (
            type(x) is torch.Tensor and x.device.type == "cpu" and x.dim() in (3, 4)
            and not (torch.is_grad_enabled() and x.requires_grad)
            and self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices
            and not (torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
                     or torch.compiler.is_compiling())
        )


def dense_block(in_features: int, out_features: int, batch_norm: bool, dropout: float = 0.0) -> list[nn.Module]:
    """Linear -> (BatchNorm1d) -> ReLU -> (Dropout); the bias is dropped when BN would cancel it."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return layers


def conv_block(
    in_channels: int, out_channels: int, kernel_size, batch_norm: bool, stride=1, padding=0
) -> list[nn.Module]:
    """Conv2d -> (BatchNorm2d) -> ReLU; the bias is dropped when BN would cancel it."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU())
    return layers


def flat_size(owner: str, features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Features per sample after ``features``, found by a dry run on zeros (also rejects too small inputs)."""
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NoraError(f"{owner} cannot run on input_shape {input_shape} (too small?): {reason}") from exc
    finally:
        features.train(was_training)
    if out.numel() == 0:
        raise NoraError(f"{owner} cannot run on input_shape {input_shape}: it leaves no features")
    return out[0].numel()
