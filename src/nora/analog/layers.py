"""Putting an analog matrix-vector product under Linear, Conv1d and Conv2d layers of any model.

An attachment does not swap modules: it sets an instance-level ``forward`` on each mapped layer (as
``nora.override_compute`` does), so names, state dicts and noise-site hooks stay as they are and
``detach`` restores the model exactly. Convolutions run as im2col matmuls (their columns given as
``Patches``), so every analog model only has to implement ``y = f(x @ W^T)``. The backward pass is
straight-through: the gradient of the float layer, at the weights the forward used.
"""

from __future__ import annotations

import fnmatch
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nora.analog import kernels
from nora.errors import NoraError
from nora.noise.rng import BankStream, Stream, check_mode, make_stream
from nora.seeds import SeedTree

MAPPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Layers that hold weights a crossbar would need but that this mapping does not implement.
UNMAPPABLE = (nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)


def _check_mappable(name: str, module: nn.Module, what: str) -> None:
    if not isinstance(module, MAPPABLE):
        raise NoraError(f"the {what} cannot map layer {name!r} ({type(module).__name__}); "
                        "only Linear, Conv1d and Conv2d are supported (exclude it with layers: [...])")
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise NoraError(f"the {what} cannot map layer {name!r}: grouped convolution (groups={module.groups})")
        if module.padding_mode != "zeros":
            raise NoraError(f"the {what} cannot map layer {name!r}: padding_mode {module.padding_mode!r}")
        if isinstance(module.padding, str) and module.padding != "valid":
            raise NoraError(f"the {what} cannot map layer {name!r}: padding {module.padding!r}; give it as numbers")
    if hasattr(module, "folded_parameters"):  # a conv that also computes the BatchNorm after it
        raise NoraError(f"the {what} cannot map layer {name!r}: its BatchNorm is folded into it (the fpga "
                        "quantisation preset), and the tile would compute the bare convolution; exclude it "
                        "with layers: [...] or train the model with fold_batch_norm: false")
    if "forward" in module.__dict__:
        raise NoraError(f"layer {name!r} already has its computation replaced (another attachment?)")


def select_layers(model: nn.Module, patterns: tuple[str, ...] | None, what: str) -> list[tuple[str, nn.Module]]:
    """The layers to map: every Linear/Conv1d/Conv2d, or those matching ``patterns`` (names or globs)."""
    if isinstance(model, MAPPABLE):  # a bare layer is its own (only) layer
        _check_mappable("", model, what)
        return [("", model)]
    named = [(n, m) for n, m in model.named_modules() if n]
    if patterns is None:
        for name, module in named:
            if isinstance(module, UNMAPPABLE):
                _check_mappable(name, module, what)
        chosen = [(n, m) for n, m in named if isinstance(m, MAPPABLE)]
    else:
        chosen, seen = [], set()
        for pattern in patterns:
            hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise NoraError(f"layer pattern {pattern!r} matches no layer of the model")
            for n, m in hits:
                if n not in seen and (pattern == n or isinstance(m, MAPPABLE) or isinstance(m, UNMAPPABLE)):
                    seen.add(n)
                    chosen.append((n, m))
    if not chosen:
        raise NoraError(f"the model has no Linear, Conv1d or Conv2d layer for the {what}")
    for name, module in chosen:
        _check_mappable(name, module, what)
    return chosen


def weight_matrix(module: nn.Module) -> torch.Tensor:
    return module.weight.reshape(module.weight.shape[0], -1)


class Patches:
    """The im2col columns [B, K, L] of a convolution's input, kept as a strided view of that input.

    (speed) ``F.unfold`` costs several times the convolution itself on CPU; a view costs nothing,
    and a model that scales its inputs (a DAC) writes the scaled columns straight from it in one
    pass (``scaled``); the float product a straight-through backward differentiates is the
    convolution itself (``linear``). ``columns`` gives the plain tensor for models that want one.
    Features are ordered (channel, kernel row, kernel column), as ``F.unfold`` orders them.
    """

    def __init__(self, padded: torch.Tensor, kernel, stride, dilation):
        self.padded = padded                               # [B, C, H, W], zero padding already applied
        self.geometry = (tuple(kernel), tuple(stride), tuple(dilation))
        v = padded
        for axis, k, s, d in ((2, kernel[0], stride[0], dilation[0]), (3, kernel[1], stride[1], dilation[1])):
            v = v.unfold(axis, (k - 1) * d + 1, s)[..., ::d]   # appends a kernel axis
        self.view = v.permute(0, 1, 4, 5, 2, 3)            # [B, C, oh, ow, kh, kw] -> [B, C, kh, kw, oh, ow]
        b, c, kh, kw, oh, ow = self.view.shape
        self.shape = torch.Size((b, c * kh * kw, oh * ow))
        self.dtype, self.device, self.requires_grad = padded.dtype, padded.device, padded.requires_grad

    @classmethod
    def of(cls, x: torch.Tensor, kernel, stride, dilation, padding) -> "Patches":
        """The patches of ``x`` [B, C, H, W] with zero ``padding`` (rows, columns)."""
        return cls(F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x,
                   kernel, stride, dilation)

    def __len__(self) -> int:
        return self.shape[0]

    def batch(self, start: int, stop: int) -> "Patches":
        return Patches(self.padded[start:stop], *self.geometry)

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``weight [O, K] @ columns + bias`` [B, O, L], computed (and differentiated) as a convolution."""
        kernel, stride, dilation = self.geometry
        w = weight.reshape(weight.shape[0], -1, *kernel)
        return F.conv2d(self.padded, w, bias, stride, 0, dilation).flatten(2)

    def columns(self) -> torch.Tensor:
        return self.view.reshape(self.shape)

    def scaled(self, factor: torch.Tensor | float, bound: float | None = None, rounded: bool = False) -> torch.Tensor:
        """``columns() * factor`` (``factor`` a number or per patch [B, 1, L]) in one pass from the view,
        clipped to +-``bound`` when given and rounded (ties to even) when ``rounded``: a DAC's codes.
        (speed) On CPU the compiled kernel (``nora.analog.kernels``) does it all in one pass, same bits."""
        if kernels.usable(self.padded, factor):
            kernel, stride, dilation = self.geometry
            out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            return kernels.dac_codes(out, self.padded, factor.reshape(-1) if isinstance(factor, torch.Tensor) else
                                     factor, [*kernel, *stride, *dilation, *self.view.shape[-2:]], bound, rounded)
        out = torch.empty(self.view.shape, dtype=self.dtype, device=self.device)
        if isinstance(factor, torch.Tensor):
            factor = factor.reshape(self.shape[0], 1, 1, 1, *self.view.shape[-2:])
        torch.mul(self.view, factor, out=out)
        if bound is not None:
            out.clamp_(-bound, bound)
        if rounded:
            out.round_()
        return out.view(self.shape)

    def rows(self, where: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The feature vectors [n, K] of the patches at (sample, position) indices ``where``."""
        batch, position = where
        width = self.view.shape[-1]
        picked = self.view.permute(0, 4, 5, 1, 2, 3)[batch, position // width, position % width]
        return picked.reshape(len(batch), -1)


def materialised(x: torch.Tensor | Patches) -> torch.Tensor:
    """A plain tensor of ``x`` (the columns of patches)."""
    return x.columns() if isinstance(x, Patches) else x


def as_matmul(module: nn.Module, x: torch.Tensor, mvm) -> torch.Tensor:
    """Run layer ``module`` on ``x`` with ``mvm(x, dim, absmax) -> y`` as its matrix product (bias included).

    ``dim`` is where the K features lie: -1 for Linear ([..., K] -> [..., O]); -2 for convolutions,
    whose input arrives as ``Patches`` ([B, K, L] -> [B, O, L], no transposed copy).
    ``absmax`` (convolutions only) computes each patch's max |x| cheaply, for abs-max noise management.
    """
    if isinstance(module, nn.Linear):
        return mvm(x, -1, None)
    two_d = isinstance(module, nn.Conv2d)
    if not two_d:
        x = x.unsqueeze(-2)
    pair = (lambda v: tuple(v)) if two_d else (lambda v: (1, v[0]))
    padding = (0,) * (2 if two_d else 1) if module.padding == "valid" else module.padding
    kernel, stride, dilation, padding = (pair(module.kernel_size), pair(module.stride),
                                         pair(module.dilation), (0, padding[0]) if not two_d else tuple(padding))
    batch = x.shape[0]
    patches = Patches.of(x, kernel, stride, dilation, padding)
    out_h, out_w = patches.view.shape[-2:]

    def patch_absmax() -> torch.Tensor:
        """max |x| of every patch [B, 1, L]: a separable max over windows of the input, not of the columns
        (as elementwise maxima of shifted slices, cheaper than a reduction over a window axis; on CPU
        the compiled kernel does it in one pass, same bits)."""
        if kernels.usable(x):
            return kernels.patch_absmax(x, [*kernel, *stride, *dilation, *padding, out_h, out_w])
        a = x.abs().amax(1)
        if any(padding):
            a = F.pad(a, (padding[1], padding[1], padding[0], padding[0]))  # zeros are exact: |x| >= 0
        for axis, k, s, d, n in ((2, kernel[1], stride[1], dilation[1], out_w),
                                 (1, kernel[0], stride[0], dilation[0], out_h)):
            span = (n - 1) * s + 1
            m = a.narrow(axis, 0, span)
            for j in range(1, k):
                m = torch.maximum(m, a.narrow(axis, j * d, span))
            a = m if s == 1 else m[(slice(None),) * axis + (slice(None, None, s),)]
        return a.reshape(batch, 1, -1)

    y = mvm(patches, -2, patch_absmax)                                            # [B, O, L]: features on dim -2
    y = y.reshape(batch, -1, out_h, out_w)
    return y if two_d else y.squeeze(-2)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """``x @ W^T + b`` with the features of ``x`` on ``dim`` (-1 or -2)."""
    if dim == -1:
        return F.linear(x, weight, bias)
    y = torch.matmul(weight, x)
    return y if bias is None else y + bias.unsqueeze(-1)


def rows_of(x: torch.Tensor | Patches, dim: int) -> torch.Tensor:
    """Features-last 2-D rows [R, K] of ``x`` (a copy for dim -2)."""
    x = materialised(x)
    return (x if dim == -1 else x.transpose(-1, -2)).reshape(-1, x.shape[dim])


def from_rows(y: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of ``rows_of`` for outputs [R, O]."""
    if dim == -1:
        return y.reshape(*like.shape[:-1], y.shape[-1])
    return y.reshape(*like.shape[:-2], like.shape[-1], y.shape[-1]).transpose(-1, -2)


def straight_through(y_hw: torch.Tensor, x: torch.Tensor | Patches, weight: torch.Tensor, bias: torch.Tensor | None,
                     dim: int = -1, mask: torch.Tensor | None = None):
    """``y_hw`` forward, gradient of ``x @ W^T + b`` backward (times ``mask`` where given)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return y_hw.detach()
    lin = x.linear(weight, bias) if isinstance(x, Patches) else linear(x, weight, bias, dim)
    delta = lin - lin.detach()
    return y_hw.detach() + (delta if mask is None else delta * mask)


@dataclass
class MappedLayer:
    name: str
    module: nn.Module
    state: dict[str, Any] = field(default_factory=dict)


class Attachment:
    """Shared machinery of every analog attachment: install, generators per purpose, detach."""

    kind = "analog"
    what = "analog model"

    def __init__(self, config, model: nn.Module, seeds: SeedTree | int | None, noise_mode: str = "exact"):
        self.config = config
        self.model = model
        self.layers = [MappedLayer(n, m) for n, m in select_layers(model, config.layers, self.what)]
        self.seeds = SeedTree.of(seeds)
        self.noise_mode = check_mode(noise_mode)
        self._generators: dict[tuple, torch.Generator] = {}
        self._streams: dict[tuple, Stream | BankStream] = {}
        self._attached = True
        for layer in self.layers:
            layer.module.forward = types.MethodType(
                lambda module, x, _layer=layer: as_matmul(
                    module, x, lambda x2, dim, absmax, _l=_layer: self.compute(_l, x2, dim, absmax)),
                layer.module)
        self.reseed(self.seeds)

    def generator(self, purpose: str, layer: MappedLayer, device: torch.device) -> torch.Generator:
        """A stream per (purpose, layer, device) derived from the current seeds; kept until reseed."""
        key = (purpose, layer.name, str(device))
        gen = self._generators.get(key)
        if gen is None:
            gen = self._node(purpose, layer).generator(device)
            self._generators[key] = gen
        return gen

    def stream(self, purpose: str, layer: MappedLayer) -> Stream | BankStream:
        """The per-pass Gaussian draws of (purpose, layer) in the attachment's noise mode; kept until reseed.

        Exact mode draws from the same seed node as ``generator`` would."""
        key = (purpose, layer.name)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = make_stream(self._node(purpose, layer), self.noise_mode)
        return stream

    def fresh_generator(self, purpose: str, layer: MappedLayer, device: torch.device) -> torch.Generator:
        """A stream restarted at every call: the same draws each time (a chip programmed from these seeds)."""
        return self._node(purpose, layer).generator(device)

    def _node(self, purpose: str, layer: MappedLayer) -> SeedTree:
        """The seed node of one purpose on one layer: every draw of that kind there derives from it."""
        return self.seeds.child(self.kind, purpose, layer.name or "(model)")

    def reseed(self, seeds: SeedTree | int) -> None:
        self.seeds = SeedTree.of(seeds)
        self._generators.clear()
        self._streams.clear()
        for layer in self.layers:
            layer.state.clear()

    def detach(self) -> nn.Module:
        if self._attached:
            for layer in self.layers:
                layer.module.__dict__.pop("forward", None)
            self._attached = False
        return self.model

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def compute(self, layer: MappedLayer, x: torch.Tensor, dim: int,
                absmax=None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def weights_key(module: nn.Module) -> tuple:
    """Changes whenever the layer's weight or bias is modified in place or replaced."""
    return tuple((p._version, p.data_ptr()) for p in (module.weight, module.bias) if p is not None)
