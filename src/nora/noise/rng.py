"""Seeded standard-normal streams made from a seed-tree node: exact (fresh draws) or fast (a bank).

A stream never touches torch's global generator and draws where the activations live, with no host
round-trip. Two modes, chosen by ``make_stream(node, mode)``:

* ``"exact"`` (``Stream``): fresh i.i.d. draws. On CPU they come from nora's counter-based generator
  (``nora.noise.philox``: Philox4x32-10 and Box-Muller, about 1.2 ns per value on 2 threads in the
  compiled kernel, added into the result without writing the draw), on CUDA from torch's Philox.
* ``"fast"`` (``BankStream``): values read from a pre-generated bank of N(0, 1) values G and a short
  pattern S of random signs that repeats (``SIGN_PERIOD`` long, so it stays in cache). A draw of n
  values picks, from the stream's own seeded generator, an offset a into the bank and a rotation r of
  the pattern, and returns ``z_i = G[a + i] * S[r + i mod L]`` (L: ``sign_row_length(n)``). It is
  one fused multiply-add into the site's output with a single memory stream besides the output
  itself; each value is exactly N(0, 1) and a draw's values are independent (no bank entry is used
  twice in one draw, and a symmetric value times any sign is independent of it), so a draw has no
  period. Two draws that happen to overlap in the bank share values only under an unrelated sign
  sequence, so they are uncorrelated at every lag, not just on average. The bank of a draw holds at
  least ``max(DEFAULT_BANK_SIZE, 2n)`` values; it is built from seeded blocks, so a larger bank
  extends a smaller one and the numbers of a draw depend only on its size and the stream's history,
  never on what other streams drew (packing and backends keep their bit-identical results).

Offsets are drawn on the host from a numpy generator: slicing needs no device synchronisation.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch

from nora.errors import NoraError
from nora.noise import kernels, philox
from nora.seeds import SeedTree

NoiseMode = Literal["exact", "fast"]
NOISE_MODES: tuple[str, ...] = ("exact", "fast")
#: Values in the smallest bank (2**22: 16 MB in float32, drawn once per process and seed).
DEFAULT_BANK_SIZE = 1 << 22
#: Signs in the repeating sign pattern (128 KB in float32: it stays in a core's L2 cache).
SIGN_PERIOD = 1 << 15
#: The bank is generated (and grows) in blocks of this many values, each from its own seed node.
BANK_BLOCK = 1 << 20
#: Banks kept per process (by device, dtype and root seed); the oldest is dropped beyond this.
MAX_BANKS = 4


def check_mode(mode: object) -> str:
    if mode not in NOISE_MODES:
        raise NoraError(f"unknown noise mode {mode!r}; choose one of {', '.join(NOISE_MODES)}")
    return mode  # type: ignore[return-value]


def add_draw(x: torch.Tensor, z: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x + sigma * z`` (``z`` is consumed), ``sigma`` a number or a tensor broadcasting against ``x``.
    With a number, ``sigma * z`` rounds before the add, as in the kernels (torch's ``add(alpha=)`` fuses
    them where the CPU has a fused multiply-add)."""
    if isinstance(sigma, torch.Tensor):
        return x.addcmul_(z, sigma) if inplace else torch.addcmul(x, z, sigma)
    z = z.mul_(sigma)
    return x.add_(z) if inplace else torch.add(x, z)


class Stream:
    """Deterministic fresh N(0, 1) draws from one seed-tree node (the exact mode).

    On CPU the values are the node's counter-based stream (``nora.noise.philox``: its key and counter
    words come from the node): a draw of n values takes the next ceil(n / 32) groups of it, written by
    the compiled kernel on torch's threads where it is built, else by ``philox.normal``, with the same
    bits. The numbers depend on the draw sizes only, not on memory layout or the number of threads. On
    other devices they come from one ``torch.Generator`` of the node per device (Philox on CUDA).
    """

    __slots__ = ("node", "_generators", "_words", "_group")
    mode = "exact"

    def __init__(self, node: SeedTree | int | None = None):
        self.node = SeedTree.of(node)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._words: tuple[int, int, int, int] | None = None
        self._group = 0

    def generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = self.node.generator(device)
        return generator

    def _take(self, n: int) -> tuple[tuple[int, int, int, int], int]:
        """The counter stream's words and the first group of the next draw of ``n`` values."""
        if self._words is None:
            self._words = self.node.words(4)
        first = self._group
        self._group += -(-n // philox.GROUP)
        return self._words, first

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with N(0, 1) draws in place (on its own device); the numbers depend on its
        shape only, not on its memory layout."""
        if out.device.type != "cpu":
            return out.normal_(generator=self.generator(out.device))
        if out.numel() == 0:
            return out
        words, first = self._take(out.numel())
        if kernels.compiled_for(out):
            return kernels.counter_normal(out, None, words, first)
        z = philox.normal(out.numel(), words, first)
        return out.copy_(z.view(out.shape))

    def add_scaled(self, x: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x + sigma * z`` for the next draw z (``BankStream.add_scaled``'s interface): on CPU with one
        level, in one pass by the kernel (z never reaches memory; out of place when autograd records
        ``x``)."""
        recorded = x.requires_grad and torch.is_grad_enabled()
        if x.numel() and not isinstance(sigma, torch.Tensor) and kernels.compiled_for(x):
            words, first = self._take(x.numel())
            if recorded:
                return kernels.AddCounterNoise.apply(x, words, first, sigma)
            return kernels.counter_normal(x if inplace else torch.empty_like(x), x, words, first, sigma)
        return add_draw(x, self.normal_(torch.empty_like(x)), sigma, inplace and not recorded)

    def standard_normal(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        return self.normal_(torch.empty(shape, dtype=dtype, device=device))


class GaussianBank:
    """N(0, 1) values on one device, grown block by block from seeded nodes, and a sign pattern.

    The sign pattern holds ``SIGN_PERIOD`` random signs, stored twice in a row so that every
    rotation of it is one contiguous slice; it is small enough to stay in a core's cache.
    """

    def __init__(self, node: SeedTree, device: torch.device, dtype: torch.dtype):
        self.node, self.device, self.dtype = node, device, dtype
        self.values = torch.empty(0, device=device, dtype=dtype)
        gen = node.child("signs").generator(device)
        pattern = torch.randint(0, 2, (SIGN_PERIOD,), generator=gen, device=device).to(dtype).mul_(2).sub_(1)
        self.signs = torch.cat([pattern, pattern])

    @property
    def size(self) -> int:
        return self.values.numel()

    def ensure(self, size: int) -> None:
        """Grow the values to at least ``size`` (whole blocks; existing values stay)."""
        if size <= self.size:
            return
        new = []
        for k in range(self.size // BANK_BLOCK, -(-size // BANK_BLOCK)):
            # Blocks are drawn in float32 and converted, so every dtype sees the same bank.
            gen = self.node.child("block", k).generator(self.device)
            new.append(torch.empty(BANK_BLOCK, device=self.device).normal_(generator=gen).to(self.dtype))
        self.values = torch.cat([self.values, *new])


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


def bank_size_for(n: int, minimum: int = DEFAULT_BANK_SIZE) -> int:
    """Values a draw of ``n`` reads from: at least ``2n`` (offsets stay spread), in whole blocks."""
    need = max(minimum, 2 * n)
    return -(-need // BANK_BLOCK) * BANK_BLOCK


@functools.lru_cache(maxsize=1024)
def sign_row_length(n: int) -> int:
    """The length of the rows a draw of ``n`` values is laid out in: ``n`` itself up to
    ``SIGN_PERIOD``, beyond it the largest divisor of ``n`` that is at most ``SIGN_PERIOD``. Rows
    share one rotation of the pattern; a size with only small divisors (a large prime) gets short
    rows, which leaves a draw exact and independent but weakens the decorrelation of two draws that
    overlap in the bank (batch sizes of ordinary activations have large divisors)."""
    if n <= SIGN_PERIOD:
        return n
    best = 1
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            for length in (d, n // d):
                if best < length <= SIGN_PERIOD:
                    best = length
    return best


class BankStream:
    """Fast N(0, 1) draws read from the shared Gaussian bank at this node's seeded offsets."""

    __slots__ = ("node", "bank_size", "_offsets", "_pending", "_bank", "_layouts")
    mode = "fast"
    #: Offset draws fetched from the stream's generator at a time (a per-site numpy call costs more
    #: than adding a small site's noise).
    OFFSET_BATCH = 256

    def __init__(self, node: SeedTree | int | None = None, bank_size: int = DEFAULT_BANK_SIZE):
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 1:
            raise NoraError(f"the bank size must be an integer >= 1, got {bank_size!r}")
        self.node = SeedTree.of(node)
        self.bank_size = bank_size
        self._offsets: np.random.Generator | None = None
        self._pending: list[float] = []
        self._bank: GaussianBank | None = None
        #: Per draw size on the current bank: (values the draw reads from, row length); the bank
        #: has been grown to that size, and banks never shrink.
        self._layouts: dict[int, tuple[int, int]] = {}

    def _next(self, out: torch.Tensor) -> tuple[GaussianBank, int, int, int]:
        """The next draw for ``out``: its bank, window start, sign rotation and row length. A draw of
        n values is ``bank.values[start + i] * bank.signs[rotation + i mod length]``."""
        if not out.is_floating_point():
            raise NoraError(f"noise draws need a floating-point tensor, got {out.dtype}")
        n = out.numel()
        bank = self._bank
        if bank is None or bank.device != out.device or bank.dtype != out.dtype:
            bank = self._bank = bank_for(self.node.root, out.device, out.dtype)
            self._layouts = {}
        layout = self._layouts.get(n)
        if layout is None:
            size = bank_size_for(n, self.bank_size)
            bank.ensure(size)
            layout = self._layouts[n] = (size, sign_row_length(n))
        if not self._pending:
            if self._offsets is None:
                self._offsets = self.node.child("bank-offsets").numpy()
            self._pending = self._offsets.random(2 * self.OFFSET_BATCH).tolist()[::-1]
        pending = self._pending
        start = int(pending.pop() * (layout[0] - n + 1))
        rotation = int(pending.pop() * SIGN_PERIOD)
        return bank, start, rotation, layout[1]

    def _windows(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next draw, shaped like ``out`` flattened into rows: z = values * signs, where
        ``values`` is a (rows, L) window of the bank and ``signs`` an L-long rotation of the sign
        pattern that every row shares."""
        bank, start, rotation, length = self._next(out)
        n = out.numel()
        values = bank.values[start:start + n].view(n // length, length)
        return values, bank.signs[rotation:rotation + length]

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with N(0, 1) values from the bank in place (on its own device)."""
        if out.numel() == 0:
            return out
        values, signs = self._windows(out)
        if out.is_contiguous():
            torch.mul(values, signs, out=out.view(values.shape))
        else:
            out.copy_(torch.mul(values, signs).view(out.shape))
        return out

    def normal_scaled_(self, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with ``sigma * z`` for the next draw z, ``sigma`` broadcasting against it (one
        pass in the compiled kernel for one level per sample); consumes the stream as ``normal_``."""
        if out.numel() and kernels.usable(out, sigma):
            bank, start, rotation, length = self._next(out)
            return kernels.scaled_draw(out, bank.values, bank.signs, start, rotation, length, sigma)
        return self.normal_(out).mul_(sigma)

    def add_scaled(self, x: torch.Tensor, sigma: float | torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x + sigma * z`` for the next draw z in one pass over memory, without writing z
        anywhere (``x`` itself is the result when ``inplace``). ``x`` is contiguous; ``sigma`` a
        number or a tensor that broadcasts against ``x``: one level per sample runs in the compiled
        kernel (``nora.noise.kernels``) where it is built, other level tensors go through the drawn
        z. The draw consumes the stream exactly as ``normal_`` does."""
        if x.numel() == 0:
            return x
        recorded = x.requires_grad and torch.is_grad_enabled()
        if isinstance(sigma, torch.Tensor):
            if not kernels.usable(x, sigma):
                return add_draw(x, self.normal_(torch.empty_like(x)), sigma, inplace)
            bank, start, rotation, length = self._next(x)
            if recorded:
                return kernels.AddBankNoise.apply(x, bank.values, bank.signs, start, rotation, length, sigma)
            return kernels.add_scaled_draw(x if inplace else torch.empty_like(x), x, bank.values, bank.signs, start,
                                           rotation, length, sigma)
        if not recorded and kernels.compiled_for(x):
            bank, start, rotation, length = self._next(x)
            return kernels.bank_add(x if inplace else torch.empty_like(x), x, bank.values, bank.signs, start,
                                    rotation, length, sigma)
        values, signs = self._windows(x)
        rows = x.view(values.shape)
        out = rows.addcmul_(values, signs, value=sigma) if inplace else torch.addcmul(rows, values, signs, value=sigma)
        return out.view(x.shape)

    def standard_normal(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        return self.normal_(torch.empty(shape, dtype=dtype, device=device))


def make_stream(node: SeedTree | int | None, mode: str = "exact") -> Stream | BankStream:
    """The stream of ``mode`` ("exact": fresh draws; "fast": the Gaussian bank) for one node."""
    return BankStream(node) if check_mode(mode) == "fast" else Stream(node)


def mode_of(spec: object) -> str:
    """The noise mode a specification asks for (``spec.noise_mode``; "exact" when it has none)."""
    return check_mode(getattr(spec, "noise_mode", "exact"))
