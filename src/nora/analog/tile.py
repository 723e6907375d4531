"""Resistive crossbar tiles under a model's layers: mapping, periphery, PCM programming, drift, read noise.

Per layer the weight matrix (bias as one more column when the bias is analog) is split into blocks of
at most ``max_out x max_in``; each block is normalised by its largest |w| (the maximum conductance)
and, in evaluation, programmed once per reseed. One analog read of a block, in normalised units:

    alpha = max|x| (noise management)   x_q = DAC(x / alpha)   y = ADC(x_q W_n^T + N(0, out_noise^2))

then ``y * alpha * scale`` (and the drift-compensation factor) digitally; blocks along the input are
summed digitally. Training mode skips programming and applies the weight modifier instead (fresh
weight noise per forward); the backward is the float layer's gradient at the weights the forward used.
"""

from __future__ import annotations

from typing import Any

import torch

from nora.analog import pcm
from nora.analog.config import TileConfig, check_times, to_dict
from nora.analog.layers import Attachment, MappedLayer, straight_through, weight_matrix, weights_key
from nora.errors import NoraError

_TINY = 1e-30


def quantise(x: torch.Tensor, bound: float, bits: int | None) -> torch.Tensor:
    """Clip to [-bound, bound] and round to ``2^bits - 1`` levels with step ``2 bound / (2^bits - 2)``."""
    x = x.clamp(-bound, bound)
    if bits is None:
        return x
    step = 2 * bound / (2 ** bits - 2)
    return torch.round(x / step) * step


def read_block(x: torch.Tensor, w_n: torch.Tensor, forward, generator: torch.Generator, dim: int = -1,
               absmax: torch.Tensor | None = None) -> torch.Tensor:
    """One analog read of a normalised block: periphery, noise and bound management.

    ``x`` holds K features on ``dim`` (-1: [..., K] -> [..., O]; -2: [B, K, L] -> [B, O, L]);
    ``absmax``, when known, is max |x| over the features (keepdim).
    (speed) The DAC codes are integers times one step, so the step is applied to the small output,
    and the input clip is skipped when abs-max scaling already keeps inputs inside the bound.
    """
    if forward.noise_management == "abs_max":
        if absmax is None:
            lo, hi = torch.aminmax(x, dim=dim, keepdim=True)
            absmax = torch.maximum(hi, -lo)
        alpha = absmax
        alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    else:
        shape = list(x.shape)
        shape[dim] = 1
        alpha = x.new_ones(shape)
    inside = forward.noise_management == "abs_max" and forward.inp_bound >= 1
    bits, bound = forward.inp_bits, forward.inp_bound
    step = 2 * bound / (2 ** bits - 2) if bits is not None else 1.0

    def once(rows: torch.Tensor, scale: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = rows * (1.0 / (scale * step))
        if not inside:
            z.clamp_(-bound / step, bound / step)
        if bits is not None:
            z.round_()
        raw = z @ w_n.T if d == -1 else torch.matmul(w_n, z)
        if step != 1.0:
            raw.mul_(step)
        if forward.out_noise > 0:
            raw.add_(torch.randn(raw.shape, generator=generator, device=raw.device, dtype=raw.dtype),
                     alpha=forward.out_noise)
        saturated = (raw >= forward.out_bound) | (raw <= -forward.out_bound)
        return quantise(raw, forward.out_bound, forward.out_bits).mul_(scale), saturated

    y, saturated = once(x, alpha, dim)
    if forward.bound_management == "iterative":
        rows_sat = saturated.any(dim)
        if bool(rows_sat.any()):
            # the saturated input vectors, features last, are read again at half the input each time
            x_rows = x if dim == -1 else x.transpose(-1, -2)
            y_rows = y if dim == -1 else y.transpose(-1, -2)
            a_rows = alpha if dim == -1 else alpha.transpose(-1, -2)
            where = rows_sat.nonzero(as_tuple=True)
            xs, scale = x_rows[where], a_rows[where]
            for _ in range(forward.bm_max_iter):
                scale = scale * 2
                y_new, sat_new = once(xs, scale, -1)
                y_rows[where] = y_new
                keep = sat_new.any(-1)
                if not bool(keep.any()):
                    break
                where = tuple(w[keep] for w in where)
                xs, scale = xs[keep], scale[keep]
    return y


class AttachedTile(Attachment):
    """A ``TileConfig`` living on one model; ``set_time`` moves the programmed chip along its drift."""

    kind = "tile"
    what = "analog tile"

    def __init__(self, config: TileConfig, model, seeds):
        self.time = 0.0
        super().__init__(config, model, seeds)

    def set_time(self, seconds: float) -> None:
        """Seconds since programming (drift, read noise and its compensation follow)."""
        self.time = check_times([seconds])[0]
        for layer in self.layers:
            layer.state.pop("at_time", None)

    def describe(self) -> dict[str, Any]:
        return {"kind": "tile", "config": to_dict(self.config), "time_s": self.time,
                "layers": self.layer_names(), "seeds": self.seeds.describe()}

    # -- weights -------------------------------------------------------------------------------
    def _augmented(self, module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight matrix (clipped; with the bias as a last column when analog) and the digital bias."""
        w = weight_matrix(module)
        clip = self.config.clip
        if clip.kind == "fixed":
            w = w.clamp(-clip.value, clip.value)
        elif clip.kind == "sigma":
            bound = clip.value * w.detach().std()
            w = torch.maximum(torch.minimum(w, bound), -bound)
        bias = module.bias
        if bias is not None and not self.config.mapping.digital_bias:
            return torch.cat([w, bias.unsqueeze(1)], 1), None
        return w, bias

    def _blocks(self, w: torch.Tensor) -> list[tuple[slice, slice, torch.Tensor, torch.Tensor]]:
        mapping = self.config.mapping
        out = []
        for r in range(0, w.shape[0], mapping.max_out):
            for c in range(0, w.shape[1], mapping.max_in):
                rows, cols = slice(r, r + mapping.max_out), slice(c, c + mapping.max_in)
                block = w[rows, cols]
                scale = block.detach().abs().max()
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))
                out.append((rows, cols, block / scale, scale))
        return out

    def _program(self, layer: MappedLayer) -> None:
        """Program the layer's current weights once (programming noise, drift exponents, compensation reference)."""
        with torch.no_grad():
            w, _ = self._augmented(layer.module)
            device = self.config.device
            gen = self.fresh_generator("program", layer, w.device)
            blocks = []
            for rows, cols, w_n, scale in self._blocks(w):
                entry = {"rows": rows, "cols": cols, "scale": scale, "w_n": w_n}
                if device.model == "pcm":
                    entry["pcm"] = pcm.program(w_n, device, gen)
                    programmed = pcm.read(entry["pcm"]["g_prog"], entry["pcm"]["q"], 0.0, device, None)
                    entry["ref"] = programmed.sum(1).abs().sum()  # response to the all-ones probe
                blocks.append(entry)
        layer.state.update(blocks=blocks, key=weights_key(layer.module))
        layer.state.pop("at_time", None)

    def _at_time(self, layer: MappedLayer) -> list[dict]:
        """Drifted conductances and the compensation factor at the current time, computed once per time."""
        blocks = layer.state["blocks"]
        device = self.config.device
        if device.model != "pcm" or layer.state.get("at_time") == self.time:
            return blocks
        gen = self.fresh_generator("compensation", layer, blocks[0]["w_n"].device)
        with torch.no_grad():
            for entry in blocks:
                g = pcm.conductances_at(entry["pcm"], self.time, device)
                entry["g_drift"] = g
                comp = torch.ones((), dtype=g.dtype, device=g.device)
                if device.drift_compensation:
                    probe = pcm.read(g, entry["pcm"]["q"], self.time, device, gen).sum(1).abs().sum()
                    comp = entry["ref"] / probe.clamp(min=_TINY)
                entry["comp"] = comp
        layer.state["at_time"] = self.time
        return blocks

    # -- forward -------------------------------------------------------------------------------
    def compute(self, layer: MappedLayer, x: torch.Tensor, dim: int = -1, absmax=None) -> torch.Tensor:
        module = layer.module
        gen = self.generator("forward", layer, x.device)
        analog_bias = module.bias is not None and not self.config.mapping.digital_bias
        if analog_bias:
            shape = list(x.shape)
            shape[dim] = 1
            x_in = torch.cat([x, x.new_ones(shape)], dim)
        else:
            x_in = x
        if module.training:
            w, bias = self._augmented(module)
            w = self._modified(w, layer, x.device)
            with torch.no_grad():
                y = self._read_all(x_in, [{"rows": r, "cols": c, "w_n": b, "scale": s}
                                          for r, c, b, s in self._blocks(w.detach())], w.shape[0], gen, dim,
                                   absmax=None if analog_bias else absmax)
        else:
            if layer.state.get("key") != weights_key(module):
                self._program(layer)
            w, bias = self._augmented(module)
            with torch.no_grad():
                y = self._read_all(x_in, self._at_time(layer), w.shape[0], gen, dim,
                                   self.generator("read", layer, x.device), None if analog_bias else absmax)
        if bias is not None:
            y = y + (bias.detach() if dim == -1 else bias.detach().unsqueeze(-1))
        return straight_through(y, x_in, w, bias, dim)

    def _modified(self, w: torch.Tensor, layer: MappedLayer, device) -> torch.Tensor:
        modifier = self.config.modifier
        if modifier.kind == "none" or modifier.std == 0:
            return w
        noise = torch.randn(w.shape, generator=self.generator("modifier", layer, device), device=device, dtype=w.dtype)
        if modifier.kind == "add_normal":
            return w + modifier.std * w.detach().abs().max() * noise
        return w * (1 + modifier.std * noise)

    def _read_all(self, x: torch.Tensor, blocks: list[dict], out_features: int, gen: torch.Generator, dim: int,
                  read_gen: torch.Generator | None = None, absmax=None) -> torch.Tensor:
        whole = self.config.forward.noise_management == "abs_max" and absmax is not None and \
            x.shape[dim] <= self.config.mapping.max_in
        patch_max = absmax() if whole else None  # one input block: the patches' max |x| holds for it
        y = None
        device = self.config.device
        for entry in blocks:
            if "pcm" in entry:
                w_n = pcm.read(entry["g_drift"], entry["pcm"]["q"], self.time, device, read_gen)
            else:
                w_n = entry["w_n"]
            factor = entry["scale"] * entry["comp"] if "comp" in entry else entry["scale"]
            cols = (Ellipsis, entry["cols"]) if dim == -1 else (Ellipsis, entry["cols"], slice(None))
            part = read_block(x[cols], w_n, self.config.forward, gen, dim, patch_max).mul_(factor)
            if len(blocks) == 1:
                return part
            if y is None:
                shape = list(x.shape)
                shape[dim] = out_features
                y = x.new_zeros(shape)
            y[(Ellipsis, entry["rows"]) if dim == -1 else (Ellipsis, entry["rows"], slice(None))] += part
        return y


def attach_tile(config: TileConfig, model, seeds) -> AttachedTile:
    if not isinstance(config, TileConfig):
        raise NoraError(f"expected a TileConfig, got {type(config).__name__}")
    return AttachedTile(config, model, seeds)
