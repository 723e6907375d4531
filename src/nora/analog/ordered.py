"""The order-aware MAC of a BrainScaleS-2-like analog processor (methods.md section 10).

Integer operands: inputs ``0 .. 2^input_bits - 1`` (per-sample abs-max scaling; negative inputs as a
second pass whose result is subtracted digitally), weights ``-(2^weight_bits - 1) .. 2^weight_bits - 1``
(per-layer abs-max; the sign is the excitatory/inhibitory synapse row). The analog accumulator of one
chunk of ``rows`` inputs saturates: with ``ordered`` it is clamped to [out_min, out_max] after every
operand, in the order the operands arrive, so a large positive partial sum that saturates is not
undone by later negative operands; the non-ordered variant clamps only the chunk total. The ADC
then reads ``floor(s + N(0, noise^2) + offset_j)`` clamped; chunks are summed digitally and clamped
again, and the result is scaled back to float units (``/ gain``). Orders: ``natural`` (row index),
``magnitude`` (largest input first, per sample), ``positive_first`` (excitatory operands first; closed
form, since each run of same-signed operands is monotone), ``random`` (a fresh permutation per
sample and forward). The backward pass is the float layer's gradient: straight-through, which in
integer units is the matmul scaled by the gain; ``backward: saturation_masked`` zeroes it for the
outputs where a clamp acted (the derivative of the clamps, as for a saturating quantiser).
"""

from __future__ import annotations

from typing import Any

import torch

from nora.analog.config import OrderedMACConfig, to_dict
from nora.analog.layers import Attachment, MappedLayer, from_rows, rows_of, straight_through, weight_matrix
from nora.errors import NoraError
from nora.noise.rng import BankStream, Stream
from nora.seeds import SeedTree


def integer_weights(w: torch.Tensor, cfg: OrderedMACConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed integer weights and their float step (per layer abs-max)."""
    levels = 2 ** cfg.weight_bits - 1
    scale = w.abs().max() / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / scale).clamp(-levels, levels), scale


def integer_inputs(x: torch.Tensor, cfg: OrderedMACConfig) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Unsigned integer input passes (positive part, then negative part with ``split``) and the per-row step."""
    levels = 2 ** cfg.input_bits - 1
    parts = [x.clamp(min=0)] + ([(-x).clamp(min=0)] if cfg.input_sign == "split" else [])
    scale = torch.stack([p.amax(1) for p in parts]).amax(0, keepdim=False).unsqueeze(1) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return [torch.round(p / scale).clamp(0, levels) for p in parts], scale


def accumulate(xc: torch.Tensor, wc: torch.Tensor, gain: torch.Tensor, cfg: OrderedMACConfig,
               order_gen: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
    """Analog accumulator per chunk: ``xc`` [R, C, rows] integers, ``wc`` [C, rows, O] -> [R, C, O] (before the ADC)."""
    lo, hi = float(cfg.out_min), float(cfg.out_max)
    if not cfg.ordered:
        return torch.einsum("rck,cko->rco", xc, wc) * gain
    if cfg.order == "positive_first":
        pos = torch.einsum("rck,cko->rco", xc, wc.clamp(min=0)) * gain
        neg = torch.einsum("rck,cko->rco", xc, wc.clamp(max=0)) * gain
        return (pos.clamp(lo, hi) + neg).clamp(lo, hi)
    rows_, chunks, width = xc.shape
    rows = min(width, steps) if steps is not None else width  # padding rows past K add nothing
    s = torch.zeros(rows_, chunks, wc.shape[2], dtype=xc.dtype, device=xc.device)
    if cfg.order == "natural":
        # (speed) operand-major copies make each step's operands contiguous; the step is one fused
        # multiply-add and one clamp in place, no temporaries
        x_steps = xc.permute(2, 0, 1).unsqueeze(-1).contiguous()   # [rows, R, C, 1]
        w_steps = (wc * gain).permute(1, 0, 2).contiguous()         # [rows, C, O]
        for k in range(rows):
            s.addcmul_(x_steps[k], w_steps[k]).clamp_(lo, hi)
        return s
    if cfg.order == "magnitude":
        idx = torch.argsort(xc, dim=2, descending=True, stable=True)
    else:
        keys = torch.rand(xc.shape, generator=order_gen, device=xc.device)
        if steps is not None:  # padding rows sort last, so the first ``rows`` steps hold every real operand
            position = torch.arange(chunks * width, device=xc.device).reshape(chunks, width)
            keys = keys.masked_fill(position >= steps, 2.0)
        idx = torch.argsort(keys, dim=2)
    x_steps = torch.gather(xc, 2, idx).permute(2, 0, 1).unsqueeze(-1).contiguous()   # [rows, R, C, 1]
    idx_steps = idx.permute(2, 0, 1).contiguous()                                     # [rows, R, C]
    chunk = torch.arange(chunks, device=xc.device).unsqueeze(0)
    wg = wc * gain
    for k in range(rows):
        s.addcmul_(x_steps[k], wg[chunk, idx_steps[k]]).clamp_(lo, hi)
    return s


def mac(x_int: torch.Tensor, w_int: torch.Tensor, cfg: OrderedMACConfig, pattern: dict[str, torch.Tensor],
        noise: Stream | BankStream | None, order_gen: torch.Generator | None = None, with_mask: bool = False):
    """Integer MAC of rows ``x_int`` [R, K] with ``w_int`` [O, K]: ADC codes summed over chunks, [R, O].

    ``with_mask`` also returns where any clamp acted (the accumulator along the way, the ADC, the total).
    """
    k = x_int.shape[1]
    rows = min(cfg.rows, k)   # one short chunk is not padded to the chunk height: padding adds nothing
    chunks = -(-k // rows)
    pad = chunks * rows - k
    xc = (torch.nn.functional.pad(x_int, (0, pad)) if pad else x_int).reshape(x_int.shape[0], chunks, rows)
    wc = (torch.nn.functional.pad(w_int, (0, pad)) if pad else w_int).T.reshape(chunks, rows, w_int.shape[0])
    gain = cfg.gain * pattern["gain"]
    acc = accumulate(xc, wc, gain, cfg, order_gen, steps=k)
    s = acc
    if cfg.noise > 0:
        s = noise.add_scaled(acc.contiguous(), cfg.noise, inplace=False)
    raw = torch.floor(s + pattern["offset"])
    codes = raw.clamp(cfg.out_min, cfg.out_max)
    total = codes.sum(1)
    out = total.clamp(cfg.out_min, cfg.out_max)
    if not with_mask:
        return out
    clipped = (raw != codes).any(1) | (total != out)
    if cfg.ordered:  # the accumulator saturated on the way: it no longer equals the free sum
        free = torch.einsum("rck,cko->rco", xc, wc) * gain
        clipped |= ((acc - free).abs() > 1e-3).any(1)
    return out, clipped


def draw_pattern(cfg: OrderedMACConfig, columns: int, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
    """One chip's fixed pattern for a layer: relative column gains and column offsets (LSB)."""
    gain = 1 + cfg.gain_spread * torch.randn(columns, generator=generator, device=device)
    offset = cfg.offset_spread * torch.randn(columns, generator=generator, device=device)
    return {"gain": gain, "offset": offset}


def ordered_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, cfg: OrderedMACConfig,
                   pattern: dict[str, torch.Tensor], noise: Stream | BankStream | None,
                   order_gen: torch.Generator | None = None) -> torch.Tensor:
    """``x @ w^T + bias`` as the analog processor computes it, in float units (no autograd), and where
    a clamp acted (only with ``backward: saturation_masked``, else None)."""
    with torch.no_grad():
        w_int, w_scale = integer_weights(w, cfg)
        parts, x_scale = integer_inputs(x, cfg)
        masked = cfg.backward == "saturation_masked"
        codes, clipped = _mac(parts[0], w_int, cfg, pattern, noise, order_gen, masked)
        if len(parts) > 1 and bool((parts[1] > 0).any()):
            neg, neg_clipped = _mac(parts[1], w_int, cfg, pattern, noise, order_gen, masked)
            codes = codes - neg
            clipped = None if clipped is None else clipped | neg_clipped
        y = codes * (x_scale * (w_scale / cfg.gain))
        return (y if bias is None else y + bias), clipped


def _mac(x_int, w_int, cfg, pattern, noise, order_gen, masked: bool):
    if masked:
        return mac(x_int, w_int, cfg, pattern, noise, order_gen, with_mask=True)
    return mac(x_int, w_int, cfg, pattern, noise, order_gen), None


class AttachedOrderedMAC(Attachment):
    """An ``OrderedMACConfig`` on a model; reseed = another chip (fixed pattern) and fresh noise streams."""

    kind = "ordered_mac"
    what = "ordered MAC"

    def pattern(self, layer: MappedLayer, columns: int, device) -> dict[str, torch.Tensor]:
        pattern = layer.state.get("pattern")
        if pattern is None or pattern["gain"].device != torch.device(device):
            if self.config.chip_seed is None:
                gen = self.fresh_generator("chip", layer, device)
            else:
                chip = SeedTree(self.config.chip_seed)
                gen = chip.child(self.kind, "chip", layer.name or "(model)").generator(device)
            pattern = draw_pattern(self.config, columns, gen, device)
            layer.state["pattern"] = pattern
        return pattern

    def compute(self, layer: MappedLayer, x: torch.Tensor, dim: int = -1, absmax=None) -> torch.Tensor:
        module = layer.module
        w = weight_matrix(module)
        pattern = self.pattern(layer, w.shape[0], x.device)
        bias = None if module.bias is None else module.bias.detach()
        y, clipped = ordered_linear(rows_of(x, dim), w.detach(), bias, self.config,
                           pattern, self.stream("noise", layer), self.generator("order", layer, x.device))
        mask = None if clipped is None else from_rows((~clipped).to(y.dtype), x, dim)
        return straight_through(from_rows(y, x, dim), x, w, module.bias, dim, mask)

    def set_time(self, seconds: float) -> None:
        """The ordered MAC has no drift; accepted so time-following analyses run on it unchanged."""
        from nora.analog.config import check_times
        check_times([seconds])

    def describe(self) -> dict[str, Any]:
        return {"kind": "ordered_mac", "config": to_dict(self.config), "noise_mode": self.noise_mode,
                "layers": self.layer_names(), "seeds": self.seeds.describe()}


def attach_ordered(config: OrderedMACConfig, model, seeds, noise_mode: str = "exact") -> AttachedOrderedMAC:
    if not isinstance(config, OrderedMACConfig):
        raise NoraError(f"expected an OrderedMACConfig, got {type(config).__name__}")
    return AttachedOrderedMAC(config, model, seeds, noise_mode)
