"""Seeded standard-normal streams made from a seed-tree node: exact (fresh draws) or fast (a bank).

A stream never touches torch's global generator and draws where the activations live, with no host
round-trip. Two modes, chosen by ``make_stream(node, mode)``:

* ``"exact"`` (``Stream``): fresh i.i.d. draws from one ``torch.Generator`` per device (Mersenne
  Twister on CPU, counter-based Philox on CUDA). On CPU this costs 3-4 ns per value, more than the
  clean forward of a small network.
* ``"fast"`` (``BankStream``): values read from a pre-generated Gaussian bank of two independent
  halves A and B, each holding N(0, 1/2) values. A draw of n values picks, from the stream's own
  seeded generator, an offset into each half and a sign, and returns ``A[a:a+n] +/- B[b:b+n]``: one
  fused memory-speed kernel, exactly N(0, 1) per value and independent within a draw (no bank entry
  is used twice in one draw, so a draw has no period). Draws of different sites, passes and repeats
  share bank entries only at random, unaligned positions. The bank of a draw holds at least
  ``max(DEFAULT_BANK_HALF, 2n)`` values per half; it is built from seeded blocks, so a larger bank
  extends a smaller one and the numbers of a draw depend only on its size and the stream's history,
  never on what other streams drew (packing and backends keep their bit-identical results).

Offsets are drawn on the host from a numpy generator: slicing needs no device synchronisation.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from nora.errors import NoraError
from nora.seeds import SeedTree

NoiseMode = Literal["exact", "fast"]
NOISE_MODES: tuple[str, ...] = ("exact", "fast")
#: Values per half of the smallest bank (2**22: 16 MB per half in float32, drawn once per process).
DEFAULT_BANK_HALF = 1 << 22
#: The bank is generated (and grows) in blocks of this many values, each from its own seed node.
BANK_BLOCK = 1 << 20
#: Banks kept per process (by device, dtype and root seed); the oldest is dropped beyond this.
MAX_BANKS = 4


def check_mode(mode: object) -> str:
    if mode not in NOISE_MODES:
        raise NoraError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")
    return mode  # type: ignore[return-value]


def add_draw(x: torch.Tensor, z: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + sigma * z``, ``sigma`` a number or a tensor broadcasting against ``x``."""
    if isinstance(sigma, torch.Tensor):
        return x.addcmul_(z, sigma) if inplace else torch.addcmul(x, z, sigma)
    return x.add_(z, alpha=sigma) if inplace else torch.add(x, z, alpha=sigma)


class Stream:
    """Deterministic fresh N(0, 1) draws from one seed-tree node (the exact mode)."""

    __slots__ = ("node", "_generators")
    mode = "exact"

    def __init__(self, node: SeedTree | int | None = None):
        self.node = SeedTree.of(node)
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = self.node.generator(device)
        return generator

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with N(0, 1) draws in place (on its own device)."""
        return out.normal_(generator=self.generator(out.device))

    def add_scaled(self, x: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x + sigma * z`` for the next draw z (``BankStream.add_scaled``'s interface)."""
        return add_draw(x, self.normal_(torch.empty_like(x)), sigma, inplace)

    def standard_normal(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        return self.normal_(torch.empty(shape, dtype=dtype, device=device))

    def state(self) -> dict[str, torch.Tensor]:
        return {str(d): g.get_state() for d, g in self._generators.items()}


class GaussianBank:
    """Two halves of N(0, 1/2) values on one device, grown block by block from seeded nodes."""

    def __init__(self, node: SeedTree, device: torch.device, dtype: torch.dtype):
        self.node, self.device, self.dtype = node, device, dtype
        self.halves = [torch.empty(0, device=device, dtype=dtype), torch.empty(0, device=device, dtype=dtype)]
        self.size = 0

    def ensure(self, size: int) -> None:
        """Grow both halves to at least ``size`` values (whole blocks; existing values stay)."""
        if size <= self.size:
            return
        blocks = -(-size // BANK_BLOCK)
        scale = math.sqrt(0.5)
        for h, half in enumerate(self.halves):
            new = []
            for k in range(half.numel() // BANK_BLOCK, blocks):
                # Blocks are drawn in float32 and converted, so every dtype sees the same bank.
                gen = self.node.child("half", h, "block", k).generator(self.device)
                block = torch.empty(BANK_BLOCK, device=self.device).normal_(generator=gen).mul_(scale)
                new.append(block.to(self.dtype))
            self.halves[h] = torch.cat([half, *new])
        self.size = self.halves[0].numel()


_BANKS: dict[tuple[torch.device, torch.dtype, int], GaussianBank] = {}


def bank_for(root: int, device: torch.device, dtype: torch.dtype) -> GaussianBank:
    """The process's bank for one root seed on one device and dtype (created on first use)."""
    key = (torch.device(device), dtype, root)
    bank = _BANKS.get(key)
    if bank is None:
        while len(_BANKS) >= MAX_BANKS:
            _BANKS.pop(next(iter(_BANKS)))
        bank = _BANKS[key] = GaussianBank(SeedTree(root).child("noise-bank"), key[0], dtype)
    return bank


def bank_half_for(n: int, minimum: int = DEFAULT_BANK_HALF) -> int:
    """Values per half a draw of ``n`` reads from: at least ``2n`` (offsets stay spread), in blocks."""
    need = max(minimum, 2 * n)
    return -(-need // BANK_BLOCK) * BANK_BLOCK


class BankStream:
    """Fast N(0, 1) draws read from the shared Gaussian bank at this node's seeded offsets and signs."""

    __slots__ = ("node", "bank_half", "_offsets", "_pending", "_bank")
    mode = "fast"
    #: Offset draws fetched from the stream's generator at a time (a per-site numpy call costs more
    #: than adding a small site's noise).
    OFFSET_BATCH = 256

    def __init__(self, node: SeedTree | int | None = None, bank_half: int = DEFAULT_BANK_HALF):
        if isinstance(bank_half, bool) or not isinstance(bank_half, int) or bank_half < 1:
            raise NoraError(f"the bank size must be an integer >= 1, got {bank_half!r}")
        self.node = SeedTree.of(node)
        self.bank_half = bank_half
        self._offsets: np.random.Generator | None = None
        self._pending: list[float] = []
        self._bank: GaussianBank | None = None

    def _slices(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The two bank windows and the sign of the next draw shaped like ``out``: z = first + sign * second."""
        if not out.is_floating_point():
            raise NoraError(f"noise draws need a floating-point tensor, got {out.dtype}")
        n = out.numel()
        bank = self._bank
        if bank is None or bank.device != out.device or bank.dtype != out.dtype:
            bank = self._bank = bank_for(self.node.root, out.device, out.dtype)
        half = bank_half_for(n, self.bank_half)
        bank.ensure(half)
        if not self._pending:
            if self._offsets is None:
                self._offsets = self.node.child("bank-offsets").numpy()
            self._pending = self._offsets.random(3 * self.OFFSET_BATCH).tolist()[::-1]
        pending, span = self._pending, half - n + 1
        a, b = int(pending.pop() * span), int(pending.pop() * span)
        sign = 1 if pending.pop() < 0.5 else -1
        return bank.halves[0][a:a + n], bank.halves[1][b:b + n], sign

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with N(0, 1) values from the bank in place (on its own device)."""
        if out.numel() == 0:
            return out
        first, second, sign = self._slices(out)
        if out.is_contiguous():
            torch.add(first, second, alpha=sign, out=out.view(-1))
        else:
            out.copy_(torch.add(first, second, alpha=sign).view(out.shape))
        return out

    def add_scaled(self, x: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x + sigma * z`` for the next draw z without writing z anywhere: the two bank windows
        are added straight into the result (``x`` itself when ``inplace``), one pass over memory
        fewer. ``x`` is contiguous; ``sigma`` a number or a tensor that broadcasts against ``x``
        (per-sample levels); the draw consumes the stream exactly as ``normal_`` does."""
        if x.numel() == 0:
            return x
        first, second, sign = self._slices(x)
        if isinstance(sigma, torch.Tensor):
            first, second = first.view(x.shape), second.view(x.shape)
            out = x.addcmul_(first, sigma) if inplace else torch.addcmul(x, first, sigma)
            return out.addcmul_(second, sigma, value=sign)
        flat = x.view(-1)
        out = flat.add_(first, alpha=sigma) if inplace else torch.add(flat, first, alpha=sigma)
        return out.add_(second, alpha=sign * sigma).view(x.shape)

    def standard_normal(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        return self.normal_(torch.empty(shape, dtype=dtype, device=device))


def make_stream(node: SeedTree | int | None, mode: str = "exact") -> Stream | BankStream:
    """The stream of ``mode`` ("exact": fresh draws; "fast": the Gaussian bank) for one node."""
    return BankStream(node) if check_mode(mode) == "fast" else Stream(node)


def mode_of(spec: object) -> str:
    """The noise mode a specification asks for (``spec.noise_mode``; "exact" when it has none)."""
    return check_mode(getattr(spec, "noise_mode", "exact"))
