"""Compiled noise draws: exact mode's counter-based values and one-pass bank draws (built on first use).

A bank draw is ``z_i = G[a + i] * S[r + i mod L]``. With one level per sample (VANT), torch needs
two passes over memory for ``x + sigma_b * z``: write z, then add it scaled. At the large sites of a
small network that second pass was most of what VANT cost beyond noisy training with one level. This
kernel reads the bank window and the sign pattern once and writes only the result, in torch's own
intra-op thread pool (``at::parallel_for``). It rounds as the torch path does (``(G * S) * sigma``,
and ``x + (G * S) * sigma`` as one fused multiply-add where the CPU has one, as torch's ``addcmul``
does), so the numbers are the same bits with or without it; the tests check that.

It is built on first use (``nora.compiled``); without a compiler or ninja, on other devices and for
other dtypes the torch path runs.

With one level for the whole draw, torch's ``addcmul`` already takes one pass, but it needs the bank
window and ``x`` as views shaped into rows, several Python-side tensor calls per site that cost more
than a small site's arithmetic. ``bank_add`` takes the bank, the sign pattern and the two offsets
and does the pass in one call; it rounds as ``addcmul`` does (the product with a sign is exact).

The same module draws exact mode's values on CPU (``counter_normal``): the counter-based generator of
``nora.noise.philox``, two groups of eight blocks at a time in AVX2 registers where the CPU has
them, on torch's intra-op threads, written straight into the result (``x + sigma * z`` or z) without
z ever reaching memory. It is built with floating-point contraction off, so that every multiply and
add rounds once, as in ``philox.normal``, and the numbers are its bits with or without the kernel.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from nora.compiled import build
from nora.noise import philox

#: dtypes the kernel is built for.
DTYPES = (torch.float32, torch.float64)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>

// body(i, count, j) over [begin, end) in runs that stay within one sign row (j = i mod length) and
// within one block of `block` values (one sample).
template <typename F>
static inline void runs(int64_t begin, int64_t end, int64_t length, int64_t block, F body) {
  for (int64_t i = begin; i < end;) {
    const int64_t j = i % length;
    const int64_t stop = std::min(std::min(end, (i / block + 1) * block), i + length - j);
    body(i, stop - i, j);
    i = stop;
  }
}

// out[i] = x[i] + (values[i] * signs[i mod L]) * sigma[i / per_sample]  (x given), or without x.
template <typename T>
static void per_sample(T* out, const T* x, const T* values, const T* signs, const T* sigma,
                       int64_t n, int64_t per_sample, int64_t length) {
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    runs(begin, end, length, per_sample, [&](int64_t i, int64_t count, int64_t j) {
      const T s = sigma[i / per_sample];
      const T* v = values + i;
      const T* sg = signs + j;
      T* o = out + i;
      if (x != nullptr) {
        const T* base = x + i;
#ifdef __FMA__
        for (int64_t k = 0; k < count; ++k) o[k] = std::fma(v[k] * sg[k], s, base[k]);
#else
        for (int64_t k = 0; k < count; ++k) o[k] = base[k] + (v[k] * sg[k]) * s;
#endif
      } else {
        for (int64_t k = 0; k < count; ++k) o[k] = (v[k] * sg[k]) * s;
      }
    });
  });
}

torch::Tensor per_sample_draw(torch::Tensor out, c10::optional<torch::Tensor> x, torch::Tensor bank,
                              torch::Tensor signs, int64_t start, int64_t rotation, int64_t length, torch::Tensor sigma) {
  const int64_t n = out.numel();
  TORCH_CHECK((!x || x->numel() == n) && start >= 0 && start + n <= bank.numel() && rotation >= 0 && length > 0
              && n % length == 0 && rotation + length <= signs.numel() && sigma.numel() == out.size(0),
              "per_sample_draw: windows out of range");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "per_sample_draw", [&] {
    per_sample<scalar_t>(out.data_ptr<scalar_t>(), x ? x->data_ptr<scalar_t>() : nullptr,
                         bank.data_ptr<scalar_t>() + start, signs.data_ptr<scalar_t>() + rotation,
                         sigma.data_ptr<scalar_t>(), n, n / out.size(0), length);
  });
  if (out.requires_grad()) out.unsafeGetTensorImpl()->bump_version();  // see bank_add
  return out;
}

// out[i] = x[i] + (sigma * values[start + i]) * signs[rotation + i mod L]: torch's addcmul of the
// draw's windows, one level for all; multiplying by a sign is exact, so fused or not the bits agree.
template <typename T>
static void scalar_add(T* out, const T* x, const T* values, const T* signs, T sigma, int64_t n, int64_t length) {
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    runs(begin, end, length, n, [&](int64_t i, int64_t count, int64_t j) {
      const T* v = values + i;
      const T* sg = signs + j;
      const T* base = x + i;
      T* o = out + i;
      for (int64_t k = 0; k < count; ++k) o[k] = base[k] + (sigma * v[k]) * sg[k];
    });
  });
}

torch::Tensor bank_add(torch::Tensor out, torch::Tensor x, torch::Tensor bank, torch::Tensor signs, int64_t start,
                       int64_t rotation, int64_t length, double sigma) {
  const int64_t n = out.numel();
  TORCH_CHECK(x.numel() == n && start >= 0 && start + n <= bank.numel() && rotation >= 0 && length > 0
              && n % length == 0 && rotation + length <= signs.numel(), "bank_add: windows out of range");
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bank_add", [&] {
    scalar_add<scalar_t>(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bank.data_ptr<scalar_t>() + start,
                         signs.data_ptr<scalar_t>() + rotation, static_cast<scalar_t>(sigma), n, length);
  });
  // Written behind autograd's back (a site whose result no backward reads): bump the version so that
  // any saved use of it is caught by autograd's own check.
  if (out.requires_grad()) out.unsafeGetTensorImpl()->bump_version();
  return out;
}

"""


_COUNTER_SOURCE = r"""
#include <array>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

// The counter-based generator of nora.noise.philox: each line is one rounding, in the same order.
static inline float as_float(int32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
static inline int32_t as_int(float f) { int32_t b; std::memcpy(&b, &f, 4); return b; }

template <size_t N>
static inline float poly(const float (&c)[N], float x) {
  float y = c[0];
  for (size_t i = 1; i < N; ++i) y = y * x + c[i];
  return y;
}

static inline float log_unit(float u) {  // log(u), u in (0, 1]
  const int32_t bits = as_int(u);
  const float m = as_float((bits & 0x7FFFFF) | 0x3F000000);
  const bool low = m < SQRT_HALF;
  const float e = (float)((bits >> 23) - 126 - (low ? 1 : 0));
  const float x = (m - 1.0f) + (low ? m : 0.0f);
  const float z = x * x;
  float y = poly(LOG_POLY, x) * x * z;
  y = y + e * LN2_LOW;
  y = y - z * 0.5f;
  return (x + y) + e * LN2_HIGH;
}

static inline void box_muller(uint32_t a, uint32_t b, float& za, float& zb) {
  const float u = 1.0f - (float)(int32_t)(a >> 8) * 0x1p-24f;
  const float r = std::sqrt(0.0f - log_unit(u) * 2.0f);
  const uint32_t q = b >> 30;
  const float t = (float)(int32_t)((b >> 8) & 0x3FFFFF) * 0x1p-22f * HALF_PI;
  const float t2 = t * t;
  const float s = poly(SIN_POLY, t2) * t, c = poly(COS_POLY, t2);
  float ct = (q & 1) ? s : c, st = (q & 1) ? c : s;
  if ((q + 1) & 2) ct = -ct;
  if (q & 2) st = -st;
  za = r * ct;
  zb = r * st;
}

// z[8k + j] = output k of block 8 g + j, one lane at a time.
static void group_scalar(int64_t g, const std::array<uint32_t, 4>& stream, float* z) {
  for (int j = 0; j < 8; ++j) {
    const uint64_t block = (uint64_t)g * 8 + j;
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = stream[2], c3 = stream[3];
    uint32_t k0 = stream[0], k1 = stream[1];
    for (int r = 0; r < ROUNDS; ++r) {
      const uint64_t p0 = (uint64_t)MULTIPLIER0 * c0, p1 = (uint64_t)MULTIPLIER1 * c2;
      c0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
      c1 = (uint32_t)p1;
      c2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
      c3 = (uint32_t)p0;
      k0 += KEY_STEP0;
      k1 += KEY_STEP1;
    }
    box_muller(c0, c1, z[j], z[8 + j]);
    box_muller(c2, c3, z[16 + j], z[24 + j]);
  }
}

#if defined(__AVX2__)
// The same, the eight lanes in one register each.
template <size_t N>
static inline __m256 poly8(const float (&c)[N], __m256 x) {
  __m256 y = _mm256_set1_ps(c[0]);
  for (size_t i = 1; i < N; ++i) y = _mm256_add_ps(_mm256_mul_ps(y, x), _mm256_set1_ps(c[i]));
  return y;
}

static inline __m256 log_unit8(__m256 u) {
  const __m256i bits = _mm256_castps_si256(u);
  const __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFF)),
                                                       _mm256_set1_epi32(0x3F000000)));
  const __m256 low = _mm256_cmp_ps(m, _mm256_set1_ps(SQRT_HALF), _CMP_LT_OQ);
  const __m256i exponent = _mm256_add_epi32(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)),
                                            _mm256_castps_si256(low));  // low is -1 where set
  const __m256 e = _mm256_cvtepi32_ps(exponent);
  const __m256 x = _mm256_add_ps(_mm256_sub_ps(m, _mm256_set1_ps(1.0f)), _mm256_and_ps(low, m));
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(poly8(LOG_POLY, x), x), z);
  y = _mm256_add_ps(y, _mm256_mul_ps(e, _mm256_set1_ps(LN2_LOW)));
  y = _mm256_sub_ps(y, _mm256_mul_ps(z, _mm256_set1_ps(0.5f)));
  return _mm256_add_ps(_mm256_add_ps(x, y), _mm256_mul_ps(e, _mm256_set1_ps(LN2_HIGH)));
}

static inline void box_muller8(__m256i a, __m256i b, float* za, float* zb) {
  const __m256 u = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                                 _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 8)), _mm256_set1_ps(0x1p-24f)));
  const __m256 r = _mm256_sqrt_ps(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(log_unit8(u), _mm256_set1_ps(2.0f))));
  const __m256i q = _mm256_srli_epi32(b, 30), one = _mm256_set1_epi32(1), two = _mm256_set1_epi32(2);
  const __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(b, 8),
                                                                                   _mm256_set1_epi32(0x3FFFFF))),
                                               _mm256_set1_ps(0x1p-22f)), _mm256_set1_ps(HALF_PI));
  const __m256 t2 = _mm256_mul_ps(t, t);
  const __m256 s = _mm256_mul_ps(poly8(SIN_POLY, t2), t), c = poly8(COS_POLY, t2);
  const __m256 odd = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(q, one), one));
  __m256 ct = _mm256_blendv_ps(c, s, odd), st = _mm256_blendv_ps(s, c, odd);
  ct = _mm256_xor_ps(ct, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(q, one), two), 30)));
  st = _mm256_xor_ps(st, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(q, two), 30)));
  _mm256_storeu_ps(za, _mm256_mul_ps(r, ct));
  _mm256_storeu_ps(zb, _mm256_mul_ps(r, st));
}

// lo and hi 32-bit halves of each lane's product c * m.
static inline __m256i mul_wide(__m256i c, __m256i m, __m256i& hi) {
  const __m256i even = _mm256_mul_epu32(c, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Groups g and g + 1 (z and z + 32): two groups' rounds interleaved, so that their multiplies overlap.
static void groups_avx2(int64_t g, const std::array<uint32_t, 4>& stream, float* z) {
  alignas(32) uint32_t low[16], high[16];
  for (int j = 0; j < 16; ++j) {
    const uint64_t block = (uint64_t)g * 8 + j;
    low[j] = (uint32_t)block;
    high[j] = (uint32_t)(block >> 32);
  }
  __m256i a0 = _mm256_load_si256((const __m256i*)low), a1 = _mm256_load_si256((const __m256i*)high);
  __m256i b0 = _mm256_load_si256((const __m256i*)(low + 8)), b1 = _mm256_load_si256((const __m256i*)(high + 8));
  __m256i a2 = _mm256_set1_epi32((int)stream[2]), a3 = _mm256_set1_epi32((int)stream[3]), b2 = a2, b3 = a3;
  __m256i k0 = _mm256_set1_epi32((int)stream[0]), k1 = _mm256_set1_epi32((int)stream[1]);
  const __m256i m0 = _mm256_set1_epi32((int)MULTIPLIER0), m1 = _mm256_set1_epi32((int)MULTIPLIER1);
  for (int r = 0; r < ROUNDS; ++r) {
    __m256i ahi0, ahi1, bhi0, bhi1;
    const __m256i alo0 = mul_wide(a0, m0, ahi0), alo1 = mul_wide(a2, m1, ahi1);
    const __m256i blo0 = mul_wide(b0, m0, bhi0), blo1 = mul_wide(b2, m1, bhi1);
    a0 = _mm256_xor_si256(_mm256_xor_si256(ahi1, a1), k0);
    b0 = _mm256_xor_si256(_mm256_xor_si256(bhi1, b1), k0);
    a1 = alo1;
    b1 = blo1;
    a2 = _mm256_xor_si256(_mm256_xor_si256(ahi0, a3), k1);
    b2 = _mm256_xor_si256(_mm256_xor_si256(bhi0, b3), k1);
    a3 = alo0;
    b3 = blo0;
    k0 = _mm256_add_epi32(k0, _mm256_set1_epi32((int)KEY_STEP0));
    k1 = _mm256_add_epi32(k1, _mm256_set1_epi32((int)KEY_STEP1));
  }
  box_muller8(a0, a1, z, z + 8);
  box_muller8(a2, a3, z + 16, z + 24);
  box_muller8(b0, b1, z + 32, z + 40);
  box_muller8(b2, b3, z + 48, z + 56);
}
#endif

// out[i] = x[i] + sigma * z_i (x given) or z_i, for values i of `stream` from value group `first` on.
template <typename T>
static void counter_fill(T* out, const T* x, int64_t n, const std::array<uint32_t, 4>& stream, int64_t first,
                         T sigma, bool vector) {
  const int64_t groups = (n + 31) / 32;
  at::parallel_for(0, groups, 2048, [&](int64_t g0, int64_t g1) {
    alignas(32) float z[64];
    for (int64_t g = g0; g < g1; g += 2) {
      const int64_t pair = std::min<int64_t>(2, g1 - g);
#if defined(__AVX2__)
      if (vector) groups_avx2(first + g, stream, z);
      else for (int64_t h = 0; h < pair; ++h) group_scalar(first + g + h, stream, z + 32 * h);
#else
      for (int64_t h = 0; h < pair; ++h) group_scalar(first + g + h, stream, z + 32 * h);
#endif
      const int64_t base = g * 32, count = std::min<int64_t>(32 * pair, n - base);
      T* o = out + base;
      if (x != nullptr) {
        const T* xb = x + base;
        for (int64_t k = 0; k < count; ++k) o[k] = xb[k] + sigma * (T)z[k];
      } else {
        for (int64_t k = 0; k < count; ++k) o[k] = (T)z[k];
      }
    }
  });
}

torch::Tensor counter_normal(torch::Tensor out, c10::optional<torch::Tensor> x, std::vector<int64_t> stream,
                             int64_t first, double sigma, bool vector) {
  TORCH_CHECK(stream.size() == 4 && first >= 0 && (!x || x->numel() == out.numel()), "counter_normal: bad arguments");
  const std::array<uint32_t, 4> words = {(uint32_t)stream[0], (uint32_t)stream[1], (uint32_t)stream[2],
                                         (uint32_t)stream[3]};
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "counter_normal", [&] {
    counter_fill<scalar_t>(out.data_ptr<scalar_t>(), x ? x->data_ptr<scalar_t>() : nullptr, out.numel(), words, first,
                           static_cast<scalar_t>(sigma), vector);
  });
  if (out.requires_grad()) out.unsafeGetTensorImpl()->bump_version();  // see bank_add
  return out;
}
"""


def _float_literal(value: float) -> str:
    """``value`` rounded to float32, as an exact C++ hexadecimal literal (the number ``philox`` uses)."""
    return float(np.float32(value)).hex() + "f"


def _counter_source() -> str:
    """The counter generator's C++, its constants written from ``nora.noise.philox``."""
    def array(name: str, values: tuple[float, ...]) -> str:
        return f"static const float {name}[{len(values)}] = {{{', '.join(map(_float_literal, values))}}};"

    constants = [
        f"static constexpr uint32_t MULTIPLIER0 = {philox.MULTIPLIERS[0]}u, MULTIPLIER1 = {philox.MULTIPLIERS[1]}u;",
        f"static constexpr uint32_t KEY_STEP0 = {philox.KEY_STEPS[0]}u, KEY_STEP1 = {philox.KEY_STEPS[1]}u;",
        f"static constexpr int ROUNDS = {philox.ROUNDS};",
        f"static constexpr float SQRT_HALF = {_float_literal(philox.SQRT_HALF)}, HALF_PI = "
        f"{_float_literal(philox.HALF_PI)};",
        f"static constexpr float LN2_HIGH = {_float_literal(philox.LN2_HIGH)}, LN2_LOW = "
        f"{_float_literal(philox.LN2_LOW)};",
        array("LOG_POLY", philox.LOG_POLY), array("SIN_POLY", philox.SIN_POLY), array("COS_POLY", philox.COS_POLY),
    ]
    return "\n".join(constants) + _COUNTER_SOURCE


@functools.cache
def _extension():
    """The built kernel module, or None where it cannot be built."""
    return build("nora_noise_kernels", _SOURCE + _counter_source(), ("per_sample_draw", "bank_add", "counter_normal"),
                 "noise kernels", ("-ffp-contract=off",))


def counter_normal(out: torch.Tensor, x: torch.Tensor | None, stream: tuple[int, int, int, int], group: int,
                   sigma: float = 1.0, vector: bool = True) -> torch.Tensor:
    """``out = x + sigma * z`` (``out`` may be ``x``), or ``out = z`` without ``x``, for z the values of
    the counter stream ``stream`` from value group ``group`` on (``philox.normal``'s bits); ``vector``
    False takes the one-lane path the kernel uses on CPUs without AVX2."""
    return _extension().counter_normal(out, x, list(stream), group, sigma, vector)


def compiled_for(x: torch.Tensor) -> bool:
    """Whether ``bank_add`` and ``counter_normal`` take ``x``: CPU, a built dtype, contiguous, and the
    kernels built."""
    return x.device.type == "cpu" and x.dtype in DTYPES and x.is_contiguous() and _extension() is not None


def bank_add(out: torch.Tensor, x: torch.Tensor, bank: torch.Tensor, signs: torch.Tensor, start: int, rotation: int,
             length: int, sigma: float) -> torch.Tensor:
    """``out = x + (sigma * bank[start + i]) * signs[rotation + i mod length]`` in one call (``out``
    may be ``x``), as torch's ``addcmul`` of the two windows computes it."""
    return _extension().bank_add(out, x, bank, signs, start, rotation, length, sigma)


def usable(x: torch.Tensor, sigma: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` with this level: CPU, a built dtype, contiguous, one level per
    sample (shaped [batch, 1, ...]), and the kernel built."""
    return (
        x.device.type == "cpu" and x.dtype in DTYPES and x.is_contiguous()
        and sigma.dtype == x.dtype and sigma.device == x.device and sigma.dim() == x.dim()
        and sigma.shape[0] == sigma.numel() == x.shape[0] and sigma.is_contiguous() and _extension() is not None
    )


def add_scaled_draw(out: torch.Tensor, x: torch.Tensor, bank: torch.Tensor, signs: torch.Tensor, start: int,
                    rotation: int, length: int, sigma: torch.Tensor) -> torch.Tensor:
    """``out = x + (bank[start + i] * signs[rotation + i mod length]) * sigma_b`` in one pass (``out``
    may be ``x``), ``sigma_b`` the level of i's sample."""
    return _extension().per_sample_draw(out, x, bank, signs, start, rotation, length, sigma)


def scaled_draw(out: torch.Tensor, bank: torch.Tensor, signs: torch.Tensor, start: int, rotation: int, length: int,
                sigma: torch.Tensor) -> torch.Tensor:
    """``out = (bank[start + i] * signs[rotation + i mod length]) * sigma_b``: a draw with its
    per-sample level folded in, in one pass."""
    return _extension().per_sample_draw(out, None, bank, signs, start, rotation, length, sigma)


class AddBankNoise(torch.autograd.Function):
    """``x + sigma_b * z`` out of place in a graph that needs gradients: the noise does not depend on
    ``x``, so the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x, bank, signs, start, rotation, length, sigma):  # noqa: D102 - torch's interface
        return add_scaled_draw(torch.empty_like(x), x, bank, signs, start, rotation, length, sigma)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None, None, None, None, None


class AddCounterNoise(torch.autograd.Function):
    """``x + sigma * z`` of the counter stream out of place in a graph that needs gradients, in one
    kernel pass; the gradient passes through unchanged, as for ``AddBankNoise``."""

    @staticmethod
    def forward(ctx, x, stream, group, sigma):  # noqa: D102 - torch's interface
        return counter_normal(torch.empty_like(x), x, stream, group, sigma)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None, None
