"""Multi-output models for uncertainty: M heads on one backbone, last-layer MC dropout, deep ensembles.

All three return, by default, the log of the members' mean softmax ``[N, C]``: a valid logit tensor
whose argmax is the mean prediction and whose cross-entropy is the mean prediction's NLL, so every
accuracy, noise and export path of nora works on them unchanged. Inside ``per_head(model)`` they
return the members' own logits ``[N, M, C]`` instead (``member_logits`` wraps this).

The head bank replaces the backbone's final ``nn.Linear`` in place, so every backbone parameter keeps
the zoo model's name: a single-head checkpoint of the same backbone loads into it with only
``<classifier>.weight/bias`` unexpected and ``<classifier>.linear.weight/bias`` (the new heads) missing.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nora.errors import NoraError
from nora.models.common import fraction, positive_int
from nora.models.registry import build_model, register_model
from nora.seeds import SeedTree

_NORM_OR_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.GroupNorm, nn.LayerNorm)


def mean_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[N, M, C]`` member logits -> ``[N, C]`` log of the mean of their softmaxes."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=1) - math.log(logits.shape[1])


class MultiOutput(nn.Module):
    """A module that produces M member outputs; ``per_head`` switches it to returning them all."""

    num_heads: int

    def __init__(self) -> None:
        super().__init__()
        self.per_head = False

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.per_head else mean_log_probs(logits)


class HeadBank(MultiOutput):
    """M linear heads as one ``Linear(F, M*C)`` (one matmul, one noise site), viewed as ``[N, M, C]``."""

    def __init__(self, in_features: int, num_classes: int, heads: int):
        super().__init__()
        self.num_heads, self.num_classes = heads, num_classes
        self.linear = nn.Linear(in_features, heads * num_classes)

    def forward(self, x):
        z = self.linear(x)
        return self.finish(z.view(*z.shape[:-1], self.num_heads, self.num_classes))


class DropoutHead(MultiOutput):
    """Last-layer MC dropout: in training one dropout mask per sample; in eval ``samples`` masks.

    Eval masks come from the head's own generator (``reseed`` restarts it), never torch's global one.
    """

    def __init__(self, in_features: int, num_classes: int, samples: int, p: float, seed: int = 0):
        super().__init__()
        self.num_heads, self.p = samples, p
        self.linear = nn.Linear(in_features, num_classes)
        self._seeds = SeedTree(seed).child("mc-dropout")
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int | None = None) -> None:
        if seed is not None:
            self._seeds = SeedTree(seed).child("mc-dropout")
        self._generator = None

    def forward(self, x):
        if self.training:
            z = self.linear(F.dropout(x, self.p, training=True))
            return z[:, None] if self.per_head else z
        if self._generator is None or self._generator.device != x.device:
            self._generator = self._seeds.generator(x.device)
        keep = torch.empty(x.shape[0], self.num_heads, *x.shape[1:], device=x.device, dtype=x.dtype)
        keep.bernoulli_(1.0 - self.p, generator=self._generator)
        return self.finish(self.linear(x[:, None] * keep / (1.0 - self.p)))


class Ensemble(MultiOutput):
    """M independent networks; the deep-ensemble baseline (M times the parameters and compute)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.num_heads = len(members)
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return self.finish(torch.stack([m(x) for m in self.members], dim=1))


def head_module(model: nn.Module) -> MultiOutput | None:
    return next((m for m in model.modules() if isinstance(m, MultiOutput)), None)


def num_heads(model: nn.Module) -> int:
    """Members of a multi-output model; 1 for a plain classifier."""
    head = head_module(model)
    return 1 if head is None else head.num_heads


def require_heads(model: nn.Module, what: str) -> MultiOutput:
    head = head_module(model)
    if head is None:
        arch = getattr(model, "arch", type(model).__name__)
        raise NoraError(f"{what} needs a model with several heads (arch multihead, mcdropout or ensemble); "
                        f"this checkpoint is a single-head {arch!r}")
    return head


@contextlib.contextmanager
def per_head(model: nn.Module) -> Iterator[int]:
    """Within the block the model returns member logits ``[N, M, C]``; yields M."""
    head = head_module(model)
    if head is None:
        yield 1
        return
    previous, head.per_head = head.per_head, True
    try:
        yield head.num_heads
    finally:
        head.per_head = previous


def member_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[N, M, C]`` logits of every member (``[N, 1, C]`` for a single-head model)."""
    with per_head(model):
        out = model(x)
    return out[:, None] if out.ndim == 2 else out


def reseed_heads(model: nn.Module, seed: int) -> None:
    """Restart the eval-time sampling of an MC-dropout head (no-op for deterministic members)."""
    head = head_module(model)
    if isinstance(head, DropoutHead):
        head.reseed(seed)


def _final_linear(model: nn.Module, num_classes: int, owner: str) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes and name:
            found = name
    if found is None:
        raise NoraError(f"{owner}: backbone has no final nn.Linear with {num_classes} outputs to replace by heads")
    parent_name, _, attr = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def _attach(backbone: nn.Module, make_head, owner: str) -> nn.Module:
    parent, attr, old = _final_linear(backbone, backbone.num_classes, owner)
    head = make_head(old.in_features)
    setattr(parent, attr, head)
    with torch.no_grad(), per_head(backbone):
        was = backbone.training
        backbone.eval()
        out = backbone(torch.zeros(1, *backbone.input_shape))
        backbone.train(was)
    if tuple(out.shape) != (1, head.num_heads, backbone.num_classes):
        raise NoraError(f"{owner}: the backbone's last Linear is not its final layer "
                        f"(output {tuple(out.shape)}); heads cannot replace it")
    return backbone


def _force_eval(module: nn.Module, _args) -> None:
    module.training = False


def _freeze(model: nn.Module, head: nn.Module) -> None:
    """Fix the backbone: no gradients, and norm/dropout layers always in eval mode."""
    own = {id(p) for p in head.parameters()}
    for p in model.parameters():
        if id(p) not in own:
            p.requires_grad_(False)
    head_modules = {id(m) for m in head.modules()}
    for module in model.modules():
        if isinstance(module, _NORM_OR_DROPOUT) and id(module) not in head_modules:
            module.register_forward_pre_hook(_force_eval)


def _check_backbone(owner: str, backbone: str, kwargs, option: str = "backbone_kwargs") -> dict:
    if backbone in ("multihead", "mcdropout", "ensemble"):
        raise NoraError(f"{owner}: backbone must be a single-head zoo model, got {backbone!r}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise NoraError(f"{owner}: {option} must be a mapping of the backbone's options, got {kwargs!r}")
    clash = sorted({"input_shape", "num_classes"} & set(kwargs))
    if clash:
        raise NoraError(f"{owner}: give {clash[0]} to {owner} itself, not in {option}")
    return kwargs


def _count(owner: str, option: str, value) -> int:
    value = positive_int(owner, option, value)
    if value < 2:
        raise NoraError(f"{owner}: {option} must be at least 2 (an ensemble of one has no spread), got {value}")
    return value


@register_model("multihead")
def multihead(input_shape=(1, 28, 28), num_classes=10, backbone="lenet5", heads=5, backbone_kwargs=None,
              freeze_backbone=False) -> nn.Module:
    """``heads`` linear heads on a zoo backbone (its final Linear replaced); optionally a frozen backbone."""
    heads = _count("multihead", "heads", heads)
    backbone_kwargs = _check_backbone("multihead", backbone, backbone_kwargs)
    if not isinstance(freeze_backbone, bool):
        raise NoraError(f"multihead: freeze_backbone must be true or false, got {freeze_backbone!r}")
    net = build_model(backbone, input_shape=input_shape, num_classes=num_classes, **backbone_kwargs)
    net = _attach(net, lambda f: HeadBank(f, net.num_classes, heads), "multihead")
    if freeze_backbone:
        _freeze(net, head_module(net))
    return net


@register_model("mcdropout")
def mcdropout(input_shape=(1, 28, 28), num_classes=10, backbone="lenet5", samples=10, p=0.5,
              backbone_kwargs=None, seed=0) -> nn.Module:
    """Last-layer MC dropout on a zoo backbone: ``samples`` dropout masks at prediction time."""
    samples = _count("mcdropout", "samples", samples)
    p = fraction("mcdropout", "p", p)
    backbone_kwargs = _check_backbone("mcdropout", backbone, backbone_kwargs)
    net = build_model(backbone, input_shape=input_shape, num_classes=num_classes, **backbone_kwargs)
    net = _attach(net, lambda f: DropoutHead(f, net.num_classes, samples, p, seed), "mcdropout")
    head_module(net).reseed()  # forget the masks of the shape check
    return net


@register_model("ensemble")
def ensemble(input_shape=(1, 28, 28), num_classes=10, member="lenet5", members=5, member_kwargs=None) -> nn.Module:
    """Deep ensemble of ``members`` independently initialised zoo models."""
    members = _count("ensemble", "members", members)
    member_kwargs = _check_backbone("ensemble", member, member_kwargs, "member_kwargs")
    nets = [build_model(member, input_shape=input_shape, num_classes=num_classes, **member_kwargs)
            for _ in range(members)]
    return Ensemble(nets)
