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

from nora.analog import kernels, pcm
from nora.analog.config import TileConfig, check_times, to_dict
from nora.analog.layers import (Attachment, MappedLayer, Patches, materialised, straight_through, weight_matrix,
                                weights_key)
from nora.errors import NoraError

_TINY = 1e-30


#: (speed) Bytes of DAC codes one read step handles at a time: the im2col columns of a convolution
#: are many times its input, and read in pieces that stay in the core's cache they cost a fraction.
CHUNK_BYTES = 1 << 21


def _step(bound: float, bits: int | None) -> float:
    return 2 * bound / (2 ** bits - 2) if bits is not None else 1.0


def read_block(x: torch.Tensor | Patches, w_n: torch.Tensor, forward, noise, dim: int = -1,
               absmax: torch.Tensor | None = None, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
    """One analog read of a normalised block, times the digital ``gain``: periphery, noise and bound management.

    ``x`` holds K features on ``dim`` (-1: [..., K] -> [..., O]; -2: [B, K, L] -> [B, O, L], or
    ``Patches``); ``absmax``, when known, is max |x| over the features (keepdim); ``noise`` is the
    stream of output-noise draws.
    (speed) Values stay in units of the DAC step until the ADC, so the step costs no pass of its own;
    the DAC codes are written in cache-sized pieces of the batch; the output clip runs only when a
    read saturated; the ADC step, abs-max scale and ``gain`` are one multiply; on CPU compiled kernels
    (``nora.analog.kernels``) write the DAC codes and run the ADC in one pass each, with the same bits.
    """
    if forward.noise_management == "abs_max":
        if absmax is None:
            lo, hi = torch.aminmax(materialised(x), dim=dim, keepdim=True)
            absmax = torch.maximum(hi, -lo)
        alpha = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    else:
        alpha = None
    bits, bound = forward.inp_bits, forward.inp_bound
    step = _step(bound, bits)
    clip_inputs = not (forward.noise_management == "abs_max" and bound >= 1)
    out_bound = forward.out_bound / step                     # ADC range and noise in units of the DAC step
    out_step = _step(forward.out_bound, forward.out_bits) / step
    out_noise = forward.out_noise / step
    gain = gain * (_step(forward.out_bound, forward.out_bits) if forward.out_bits is not None else step)

    def once(rows, inverse, multiplier, d: int, out: torch.Tensor | None = None):
        """Read ``rows`` (DAC codes: ``rows * inverse``); returns the outputs times ``multiplier``
        and which input vectors saturated (None when none did or bound management is off)."""
        if isinstance(rows, Patches):
            z = rows.scaled(inverse, bound / step if clip_inputs else None, bits is not None)
        else:
            z = rows * inverse
            if clip_inputs:
                z.clamp_(-bound / step, bound / step)
            if bits is not None:
                z.round_()
        raw = torch.matmul(z, w_n.T, out=out) if d == -1 else torch.matmul(w_n, z, out=out)
        if out_noise > 0:
            noise.add_scaled(raw, out_noise, inplace=True)
        if kernels.usable(raw, multiplier):
            saturated = kernels.adc_(raw, multiplier, d, out_bound,
                                     1.0 / out_step if forward.out_bits is not None else None,
                                     forward.bound_management == "iterative")
            return raw, saturated
        saturated = None
        if forward.bound_management != "iterative":
            raw.clamp_(-out_bound, out_bound)
        else:
            lo, hi = torch.aminmax(raw)   # whole-tensor check first: saturation is the rare case
            if float(torch.maximum(hi, -lo)) >= out_bound:
                saturated = (raw.abs() >= out_bound).any(d)
                raw.clamp_(-out_bound, out_bound)
        if forward.out_bits is not None:
            raw.mul_(1.0 / out_step).round_()
        return raw.mul_(multiplier), saturated

    def managed(rows, scale, inverse, multiplier, out: torch.Tensor | None) -> torch.Tensor:
        """Read, then read every saturated input vector again at half the input, up to ``bm_max_iter`` times."""
        y, saturated = once(rows, inverse, multiplier, dim, out)
        if saturated is None:
            return y
        where = saturated.nonzero(as_tuple=True)
        if isinstance(rows, Patches):
            xs = rows.rows(where)
        else:
            xs = (rows if dim == -1 else rows.transpose(-1, -2))[where]
        y_rows = y if dim == -1 else y.transpose(-1, -2)
        xs_scale = xs.new_ones(len(xs), 1) if scale is None else \
            (scale if dim == -1 else scale.transpose(-1, -2))[where]
        for _ in range(forward.bm_max_iter):
            xs_scale = xs_scale * 2
            y_new, sat_new = once(xs, 1.0 / (xs_scale * step), xs_scale * gain, -1)
            y_rows[where] = y_new
            if sat_new is None:
                break
            where = tuple(w[sat_new] for w in where)
            xs, xs_scale = xs[sat_new], xs_scale[sat_new]
        return y

    if alpha is None:
        inverse, multiplier = 1.0 / step, gain
    else:
        inverse, multiplier = 1.0 / (alpha * step), alpha * gain
    batch = len(x) if isinstance(x, Patches) or x.dim() > 1 else 1
    chunk = max(1, CHUNK_BYTES // max(1, x.shape[1:].numel() * x.dtype.itemsize))
    if batch <= chunk:
        return managed(x, alpha, inverse, multiplier, None)
    shape = list(x.shape)
    shape[dim] = w_n.shape[0]
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        part = x.batch(start, stop) if isinstance(x, Patches) else x[start:stop]
        if alpha is None:
            managed(part, None, inverse, multiplier, y[start:stop])
        else:
            managed(part, alpha[start:stop], inverse[start:stop], multiplier[start:stop], y[start:stop])
    return y


class AttachedTile(Attachment):
    """A ``TileConfig`` living on one model; ``set_time`` moves the programmed chip along its drift."""

    kind = "tile"
    what = "analog tile"

    def __init__(self, config: TileConfig, model, seeds, noise_mode: str = "exact"):
        self.time = 0.0
        super().__init__(config, model, seeds, noise_mode)

    def set_time(self, seconds: float) -> None:
        """Seconds since programming (drift, read noise and its compensation follow)."""
        self.time = check_times([seconds])[0]
        for layer in self.layers:
            layer.state.pop("at_time", None)

    def describe(self) -> dict[str, Any]:
        return {"kind": "tile", "config": to_dict(self.config), "time_s": self.time, "noise_mode": self.noise_mode,
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
    def compute(self, layer: MappedLayer, x: torch.Tensor | Patches, dim: int = -1, absmax=None) -> torch.Tensor:
        module = layer.module
        noise = self.stream("forward", layer)
        analog_bias = module.bias is not None and not self.config.mapping.digital_bias
        if analog_bias:
            x = materialised(x)
            shape = list(x.shape)
            shape[dim] = 1
            x = torch.cat([x, x.new_ones(shape)], dim)
            absmax = None
        if module.training:
            w, bias = self._augmented(module)
            w = self._modified(w, layer, x.device)
            with torch.no_grad():
                y = self._read_all(x, [{"rows": r, "cols": c, "w_n": b, "scale": s}
                                       for r, c, b, s in self._blocks(w.detach())], w.shape[0], noise, dim,
                                   absmax=absmax)
        else:
            if layer.state.get("key") != weights_key(module):
                self._program(layer)
            w, bias = self._augmented(module)
            with torch.no_grad():
                y = self._read_all(x, self._at_time(layer), w.shape[0], noise, dim,
                                   self.generator("read", layer, x.device), absmax)
        if bias is not None:
            y.add_(bias.detach() if dim == -1 else bias.detach().unsqueeze(-1))
        return straight_through(y, x, w, bias, dim)

    def _modified(self, w: torch.Tensor, layer: MappedLayer, device) -> torch.Tensor:
        modifier = self.config.modifier
        if modifier.kind == "none" or modifier.std == 0:
            return w
        noise = torch.randn(w.shape, generator=self.generator("modifier", layer, device), device=device, dtype=w.dtype)
        if modifier.kind == "add_normal":
            return w + modifier.std * w.detach().abs().max() * noise
        return w * (1 + modifier.std * noise)

    def _read_all(self, x: torch.Tensor | Patches, blocks: list[dict], out_features: int, noise, dim: int,
                  read_gen: torch.Generator | None = None, absmax=None) -> torch.Tensor:
        one_input_block = x.shape[dim] <= self.config.mapping.max_in
        # one input block: the patches' max |x| holds for it
        patch_max = absmax() if one_input_block and absmax is not None and \
            self.config.forward.noise_management == "abs_max" else None
        if not one_input_block:
            x = materialised(x)
        y = None
        device = self.config.device
        for entry in blocks:
            if "pcm" in entry:
                w_n = pcm.read(entry["g_drift"], entry["pcm"]["q"], self.time, device, read_gen)
            else:
                w_n = entry["w_n"]
            factor = entry["scale"] * entry["comp"] if "comp" in entry else entry["scale"]
            part_x = x if one_input_block else \
                x[(Ellipsis, entry["cols"]) if dim == -1 else (Ellipsis, entry["cols"], slice(None))]
            part = read_block(part_x, w_n, self.config.forward, noise, dim, patch_max, factor)
            if len(blocks) == 1:
                return part
            if y is None:
                shape = list(x.shape)
                shape[dim] = out_features
                y = torch.zeros(shape, dtype=x.dtype, device=x.device)
            y[(Ellipsis, entry["rows"]) if dim == -1 else (Ellipsis, entry["rows"], slice(None))] += part
        return y


def attach_tile(config: TileConfig, model, seeds, noise_mode: str = "exact") -> AttachedTile:
    if not isinstance(config, TileConfig):
        raise NoraError(f"expected a TileConfig, got {type(config).__name__}")
    return AttachedTile(config, model, seeds, noise_mode)
