"""Counter-based N(0, 1) values: Philox4x32-10 and a Box-Muller transform in float32 (exact mode on CPU).

A counter-based generator computes value i of a stream from (key, i) alone, so any thread can draw
any part of a draw and the numbers never depend on how many threads drew them; no generator state is
carried between calls. Philox4x32-10 (Salmon et al., SC'11; torch's and cuRAND's CUDA generator)
turns a 128-bit counter and a 64-bit key into four 32-bit words. Here the key and the counter's upper
64 bits come from the stream's seed-tree node, its lower 64 bits count blocks.

Values come in groups of 32 from 8 consecutive blocks (lane j of group g is block 8g + j): value
8k + j of the group is output k of lane j, where words (w0, w1) of a block give outputs 0 and 1 and
words (w2, w3) outputs 2 and 3 by Box-Muller:

    r = sqrt(-2 log(1 - (w0 >> 8) 2^-24)),  angle = 2 pi (w1 >> 8) 2^-24,  (r cos(angle), r sin(angle))

The logarithm, sine and cosine are polynomials evaluated in float32 with one rounding per multiply
and per add, and the quadrant of the angle is taken from the word's two top bits exactly; so this
version (numpy for the words, torch's elementwise ops for the floats) and the compiled kernel
(``nora.noise.kernels``, AVX2 where the CPU has it) give the same bits, which the tests check. The
radius is at most sqrt(48 ln 2) = 5.77 (values beyond 5.77 sigma in radius have probability 2^-24
per pair, as with torch's float uniforms).
"""

from __future__ import annotations

import numpy as np
import torch

#: Philox4x32 multipliers and Weyl key increments.
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
#: Lanes (blocks) per group and values per group.
LANES = 8
GROUP = 4 * LANES
#: log(m) for m in [sqrt(1/2), sqrt(2)) as x - x^2 / 2 + x^3 P(x), x = m - 1 (Cephes' single-precision
#: minimax polynomial P, highest power first); ln 2 split in a part exact in float32 and the rest.
LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
            -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
LN2_HIGH, LN2_LOW = 0.693359375, -2.12194440e-4
SQRT_HALF = 0.707106781186547524
#: sin(t) / t and cos(t) in powers of t^2 on [0, pi/2) (Taylor series, highest power first; the
#: first omitted terms are below 1e-9).
SIN_POLY = (1 / 6227020800, -1 / 39916800, 1 / 362880, -1 / 5040, 1 / 120, -1 / 6, 1.0)
COS_POLY = (-1 / 87178291200, 1 / 479001600, -1 / 3628800, 1 / 40320, -1 / 720, 1 / 24, -1 / 2, 1.0)
HALF_PI = 1.5707963267948966

_M32 = np.uint64(0xFFFFFFFF)


def philox(counters: tuple[np.ndarray, ...], key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Philox4x32-10 of the counters (four uint64 arrays holding 32-bit words) under ``key``."""
    c0, c1, c2, c3 = counters
    k0, k1 = key
    m0, m1 = np.uint64(MULTIPLIERS[0]), np.uint64(MULTIPLIERS[1])
    shift = np.uint64(32)
    for _ in range(ROUNDS):
        p0, p1 = c0 * m0, c2 * m1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ np.uint64(k0), p1 & _M32, (p0 >> shift) ^ c3 ^ np.uint64(k1), p0 & _M32
        k0, k1 = (k0 + KEY_STEPS[0]) & 0xFFFFFFFF, (k1 + KEY_STEPS[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _horner(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    y = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        y = y.mul_(x).add_(c)
    return y


def _log(u: torch.Tensor) -> torch.Tensor:
    """log(u) for float32 u in (0, 1]."""
    bits = u.view(torch.int32)
    m = ((bits & 0x7FFFFF) | 0x3F000000).view(torch.float32)      # u = m 2^e, m in [1/2, 1)
    low = m < SQRT_HALF
    e = ((bits >> 23) - 126 - low.int()).float()
    x = (m - 1).add_(torch.where(low, m, 0.0))                      # m - 1, or 2m - 1 (exact)
    z = x * x
    y = _horner(LOG_POLY, x).mul_(x).mul_(z)
    y = y.add_(e * LN2_LOW).sub_(z.mul_(0.5))
    return (x + y).add_(e.mul_(LN2_HIGH))


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box-Muller outputs of int64 tensors of 32-bit words ``a`` (radius) and ``b`` (angle)."""
    u = (a >> 8).float().mul_(2.0 ** -24).neg_().add_(1.0)            # 1 - k 2^-24, exact
    r = _log(u).mul_(2.0).neg_().add_(0.0)                          # log(u) <= 0; +0 at u = 1
    r = torch.from_numpy(np.sqrt(r.numpy()))                          # rounded once (torch's float sqrt is not)
    quadrant = b >> 30
    t = ((b >> 8) & 0x3FFFFF).float().mul_(2.0 ** -22).mul_(HALF_PI)
    t2 = t * t
    s, c = _horner(SIN_POLY, t2).mul_(t), _horner(COS_POLY, t2)
    odd = (quadrant & 1).bool()
    cos_t, sin_t = torch.where(odd, s, c), torch.where(odd, c, s)
    cos_t.view(torch.int32).bitwise_xor_((((quadrant + 1) & 2) << 30).int())  # the sign bit: exact negation
    sin_t.view(torch.int32).bitwise_xor_(((quadrant & 2) << 30).int())
    return cos_t.mul_(r), sin_t.mul_(r)


#: Groups computed at a time (262,144 values: large enough for torch's threads, small in memory).
CHUNK_GROUPS = 8192


def _groups(stream: tuple[int, int, int, int], first: int, count: int, out: torch.Tensor) -> None:
    """Groups ``first .. first + count - 1`` of ``stream`` into ``out`` (count x 4 x 8 float32)."""
    blocks = np.arange(first * LANES, (first + count) * LANES, dtype=np.uint64)
    words = [torch.from_numpy(w.view(np.int64)) for w in philox(
        (blocks & _M32, blocks >> np.uint64(32), np.full_like(blocks, stream[2]), np.full_like(blocks, stream[3])),
        (stream[0], stream[1]))]
    for k, z in enumerate((*_pair(words[0], words[1]), *_pair(words[2], words[3]))):
        out[:, k] = z.view(count, LANES)


def normal(count: int, stream: tuple[int, int, int, int], group: int = 0) -> torch.Tensor:
    """``count`` float32 N(0, 1) values of ``stream`` (key k0, k1; counter words c2, c3) from value
    group ``group`` on: what the compiled kernel draws."""
    groups = -(-count // GROUP)
    out = torch.empty((groups, 4, LANES), dtype=torch.float32)
    for start in range(0, groups, CHUNK_GROUPS):
        stop = min(start + CHUNK_GROUPS, groups)
        _groups(stream, group + start, stop - start, out[start:stop])
    return out.reshape(-1)[:count]
