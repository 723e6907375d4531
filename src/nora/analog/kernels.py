"""Compiled one-pass kernels of an analog tile's periphery on CPU (built on first use).

The DAC codes of a convolution tile are ``round(clip(x[patch] * f[patch]))``, with one scale ``f``
per patch (abs-max noise management). torch writes them from the columns' strided view in three
passes over rows one output row long (24 and 8 values in LeNet-5), so its loop overhead costs more
than the arithmetic. ``dac_codes`` gathers, scales, clips and rounds each kernel tap's plane in one
pass, 16 values per store where the CPU has AVX-512, 8 where it has AVX2. ``patch_absmax`` (each patch's max |x|, the
noise-management scale) is one pass where torch takes an abs, a channel maximum and 2 (k - 1) window
maxima; ``adc_`` does the saturation check, clip, quantisation and digital scale in one pass where
torch takes four or five. All run in torch's intra-op thread pool and round, clip and propagate NaN
as torch does, so the numbers are the same bits with or without them; the tests check that. Built on
first use (``nora.compiled``).
"""

from __future__ import annotations

import torch

from nora.compiled import build

#: dtypes the kernel is built for.
DTYPES = (torch.float32, torch.float64)

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// One value's code, as torch's mul, clamp and round compute it.
template <typename T, bool Clip, bool Round>
static inline T code(T x, T f, T lo, T hi) {
  T v = x * f;
  if constexpr (Clip) v = std::min(std::max(v, lo), hi);
  if constexpr (Round) v = std::nearbyint(v);
  return v;
}

// One kernel tap's plane of L = oh * ow codes, o[p] = code(r[(p / ow) * row_step + (p % ow) * step], f[p]).
template <typename T, bool Clip, bool Round>
static inline void plane(T* o, const T* r, int64_t row_step, int64_t step, const T* f, int64_t oh, int64_t ow,
                         T lo, T hi) {
#ifdef __AVX512F__
  if constexpr (std::is_same_v<T, float>) {
    if (step == 1) {
      // 16 codes at a time, one full store each. Rows of a multiple of 8 values: each half of a block
      // lies in one output row and is one plain load (input rows are row_step apart). Other rows: a
      // block that runs over the end of an output row takes each row's part with a masked load.
      const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
      const int64_t L = oh * ow, gap = row_step - ow;
      auto store = [&](int64_t p, __m512 v, __mmask16 m) {
        v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, f + p));
        if constexpr (Clip) v = _mm512_min_ps(vhi, _mm512_max_ps(vlo, v));  // this order keeps NaN, as torch
        if constexpr (Round) v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm512_mask_storeu_ps(o + p, m, v);
      };
      if (ow % 8 == 0) {
        const float* half = r;  // the input of the next 8 outputs
        int64_t column = 0;
        auto next = [&]() {
          const float* at = half;
          half += 8;
          if ((column += 8) == ow) column = 0, half += gap;
          return at;
        };
        int64_t p = 0;
        for (; p + 16 <= L; p += 16) {
          const float* a = next();
          store(p, _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(a)), _mm256_loadu_ps(next()), 1),
                (__mmask16)0xFFFF);
        }
        if (p < L) store(p, _mm512_castps256_ps512(_mm256_loadu_ps(next())), (__mmask16)0x00FF);
        return;
      }
      const float* base = r;  // the input of output position p
      int64_t column = 0;     // p % ow
      for (int64_t p = 0; p < L; p += 16) {
        const int64_t n = std::min<int64_t>(16, L - p);
        __m512 v = _mm512_setzero_ps();
        const float* from = base;
        for (int64_t start = 0, end = std::min<int64_t>(n, ow - column); start < n;
             start = end, end = std::min<int64_t>(n, end + ow), from += gap)
          v = _mm512_mask_loadu_ps(v, (__mmask16)(((1u << end) - 1) & ~((1u << start) - 1)), from);
        store(p, v, n == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1));
        base += 16;
        for (column += 16; column >= ow; column -= ow) base += gap;  // no division on the loop's path
      }
      return;
    }
  }
#elif defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (step == 1 && ow % 8 == 0) {
      // 8 codes at a time: each lies in one output row and is one plain load, as above.
      const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
      for (int64_t y = 0; y < oh; ++y, o += ow, f += ow, r += row_step)
        for (int64_t q = 0; q < ow; q += 8) {
          __m256 v = _mm256_mul_ps(_mm256_loadu_ps(r + q), _mm256_loadu_ps(f + q));
          if constexpr (Clip) v = _mm256_min_ps(vhi, _mm256_max_ps(vlo, v));  // keeps NaN, as above
          if constexpr (Round) v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          _mm256_storeu_ps(o + q, v);
        }
      return;
    }
  }
#endif
  if (step == 1) {  // unit stride: a loop the compiler vectorises
    for (int64_t y = 0; y < oh; ++y, o += ow, f += ow, r += row_step)
      for (int64_t q = 0; q < ow; ++q) o[q] = code<T, Clip, Round>(r[q], f[q], lo, hi);
    return;
  }
  for (int64_t y = 0; y < oh; ++y, o += ow, f += ow, r += row_step)
    for (int64_t q = 0; q < ow; ++q) o[q] = code<T, Clip, Round>(r[q * step], f[q], lo, hi);
}

// out [B, C*kh*kw, oh*ow] from x [B, C, H, W] (padded) and f: [B, oh*ow] per patch, or one number.
template <typename T, bool Clip, bool Round>
static void codes(T* out, const T* x, const T* f, bool per_patch, int64_t B, int64_t C, int64_t H, int64_t W,
                  int64_t kh, int64_t kw, int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t oh, int64_t ow,
                  T lo, T hi) {
  const int64_t L = oh * ow, K = C * kh * kw;
  std::vector<T> constant(per_patch ? 0 : L, per_patch ? T(0) : f[0]);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* scale = per_patch ? f + b * L : constant.data();
      T* o = out + b * K * L;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j, o += L)
            plane<T, Clip, Round>(o, x + ((b * C + c) * H + i * d0) * W + j * d1, s0 * W, s1, scale, oh, ow, lo, hi);
    }
  });
}

// max(a, b) that keeps a NaN from either side, as torch's maximum does.
template <typename T>
static inline T nan_max(T a, T b) { return (a != a || a > b) ? a : b; }

// out [B, oh*ow]: each patch's max |x| over channels and its window of x [B, C, H, W] zero-padded by
// (p0, p1): the channel maximum first, then the window's maximum along rows and along columns. With
// unit strides these run as long flat loops over whole rows (vectorised); the values they leave in
// the columns past the last output are never read.
template <typename T>
static void patch_max(T* out, const T* x, int64_t B, int64_t C, int64_t H, int64_t W, int64_t kh, int64_t kw,
                      int64_t s0, int64_t s1, int64_t d0, int64_t d1, int64_t p0, int64_t p1, int64_t oh, int64_t ow) {
  const int64_t ph = H + 2 * p0, pw = W + 2 * p1, rw = s1 == 1 ? pw : ow;  // rw: row length of the row maxima
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    // a zero tail: the flat row windows read up to (kw - 1) * d1 past the last row
    std::vector<T> padded(ph * pw + (kw - 1) * d1), wide(ph * rw), tall(oh * rw);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(padded.begin(), padded.end(), T(0));
      for (int64_t c = 0; c < C; ++c) {
        const T* plane = x + (b * C + c) * H * W;
        if (p0 == 0 && p1 == 0) {
          for (int64_t t = 0; t < H * W; ++t) padded[t] = nan_max(padded[t], std::abs(plane[t]));
          continue;
        }
        for (int64_t h = 0; h < H; ++h) {
          T* dst = padded.data() + (h + p0) * pw + p1;
          const T* src = plane + h * W;
          for (int64_t w = 0; w < W; ++w) dst[w] = nan_max(dst[w], std::abs(src[w]));
        }
      }
      if (s1 == 1) {
        std::copy(padded.begin(), padded.begin() + ph * pw, wide.begin());
        for (int64_t j = 1; j < kw; ++j) {
          const T* shifted = padded.data() + j * d1;
          for (int64_t t = 0; t < ph * pw; ++t) wide[t] = nan_max(wide[t], shifted[t]);
        }
      } else {
        for (int64_t h = 0; h < ph; ++h) {
          const T* src = padded.data() + h * pw;
          T* dst = wide.data() + h * rw;
          for (int64_t q = 0; q < ow; ++q) dst[q] = src[q * s1];
          for (int64_t j = 1; j < kw; ++j)
            for (int64_t q = 0; q < ow; ++q) dst[q] = nan_max(dst[q], src[q * s1 + j * d1]);
        }
      }
      T* o = out + b * oh * ow;
      if (s0 == 1) {
        std::copy(wide.begin(), wide.begin() + oh * rw, tall.begin());
        for (int64_t i = 1; i < kh; ++i) {
          const T* shifted = wide.data() + i * d0 * rw;
          for (int64_t t = 0; t < oh * rw; ++t) tall[t] = nan_max(tall[t], shifted[t]);
        }
        for (int64_t y = 0; y < oh; ++y) std::copy(tall.begin() + y * rw, tall.begin() + y * rw + ow, o + y * ow);
        continue;
      }
      for (int64_t y = 0; y < oh; ++y) {
        const T* src = wide.data() + y * s0 * rw;
        for (int64_t q = 0; q < ow; ++q) o[y * ow + q] = src[q];
        for (int64_t i = 1; i < kh; ++i)
          for (int64_t q = 0; q < ow; ++q) o[y * ow + q] = nan_max(o[y * ow + q], src[i * d0 * rw + q]);
      }
    }
  });
}

torch::Tensor patch_absmax(torch::Tensor out, torch::Tensor x, std::vector<int64_t> geometry) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "patch_absmax", [&] {
    patch_max<scalar_t>(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), x.size(0), x.size(1), x.size(2),
                        x.size(3), geometry[0], geometry[1], geometry[2], geometry[3], geometry[4], geometry[5],
                        geometry[6], geometry[7], geometry[8], geometry[9]);
  });
  return out;
}

// One row of the ADC: clip to +-bound (or-ing into m, where given, whether each value reached it),
// times inv_step and rounded when Rounded, times f (one per value, or f[0] for all when !PerValue).
template <typename T, bool Rounded, bool PerValue>
static inline void adc_row(T* r, const T* f, uint8_t* m, int64_t n, T bound, T inv_step) {
  if (m)
    for (int64_t q = 0; q < n; ++q) m[q] |= (uint8_t)(std::abs(r[q]) >= bound);
  const T f0 = f[0];
  for (int64_t q = 0; q < n; ++q) {
    T v = std::min(std::max(r[q], -bound), bound);
    if constexpr (Rounded) v = std::nearbyint(v * inv_step);
    r[q] = v * (PerValue ? f[q] : f0);
  }
}

// In place on raw [P, O, Q]: the ADC row by row; mask [P, Q], where given, marks the input vectors
// (p, q) whose output reached the bound; the multiplier is one per (p, q) or one number.
template <typename T, bool Rounded>
static void adc(T* raw, const T* mult, bool per_vector, uint8_t* mask, int64_t P, int64_t O, int64_t Q,
                T bound, T inv_step) {
  at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      uint8_t* m = mask ? mask + p * Q : nullptr;
      if (m) std::fill(m, m + Q, uint8_t(0));
      if (Q == 1) {  // features last: one input vector per row of O outputs
        T* r = raw + p * O;
        if (m)
          for (int64_t o = 0; o < O; ++o) m[0] |= (uint8_t)(std::abs(r[o]) >= bound);
        adc_row<T, Rounded, false>(r, per_vector ? mult + p : mult, nullptr, O, bound, inv_step);
        continue;
      }
      for (int64_t o = 0; o < O; ++o) {
        T* r = raw + (p * O + o) * Q;
        if (per_vector) adc_row<T, Rounded, true>(r, mult + p * Q, m, Q, bound, inv_step);
        else adc_row<T, Rounded, false>(r, mult, m, Q, bound, inv_step);
      }
    }
  });
}

void adc_(torch::Tensor raw, torch::Tensor multiplier, c10::optional<torch::Tensor> mask, int64_t outer,
          int64_t inner, double bound, double inv_step, bool rounded) {
  const int64_t O = raw.numel() / (outer * inner);
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "adc_", [&] {
    auto run = rounded ? adc<scalar_t, true> : adc<scalar_t, false>;
    run(raw.data_ptr<scalar_t>(), multiplier.data_ptr<scalar_t>(), multiplier.numel() != 1,
        mask ? mask->data_ptr<uint8_t>() : nullptr, outer, O, inner, (scalar_t)bound, (scalar_t)inv_step);
  });
}

torch::Tensor dac_codes(torch::Tensor out, torch::Tensor x, torch::Tensor factor, std::vector<int64_t> g,
                        double lo, double hi, bool clip, bool round_) {
  const bool per_patch = factor.numel() != 1;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dac_codes", [&] {
    auto run = clip ? (round_ ? codes<scalar_t, true, true> : codes<scalar_t, true, false>)
                    : (round_ ? codes<scalar_t, false, true> : codes<scalar_t, false, false>);
    run(out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), factor.data_ptr<scalar_t>(), per_patch, x.size(0),
        x.size(1), x.size(2), x.size(3), g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], (scalar_t)lo, (scalar_t)hi);
  });
  return out;
}
"""


def _extension():
    """The built kernel module, or None where it cannot be built."""
    return build("nora_tile_kernels", _SOURCE, ("dac_codes", "patch_absmax", "adc_"), "analog tile kernels")


def usable(padded: torch.Tensor, factor: torch.Tensor | float = 1.0) -> bool:
    """Whether the kernels take this input and scale: CPU, a built dtype, contiguous, and the kernels built."""
    if isinstance(factor, torch.Tensor) and not (
            factor.dtype == padded.dtype and factor.device == padded.device and factor.is_contiguous()):
        return False
    return padded.device.type == "cpu" and padded.dtype in DTYPES and padded.is_contiguous() \
        and _extension() is not None


def patch_absmax(x: torch.Tensor, geometry: list[int]) -> torch.Tensor:
    """Each patch's max |x| [B, 1, L] of ``x`` [B, C, H, W]; ``geometry`` is (kh, kw, stride h, w,
    dilation h, w, zero padding h, w, out h, out w)."""
    out = torch.empty(x.shape[0], 1, geometry[8] * geometry[9], dtype=x.dtype, device=x.device)
    return _extension().patch_absmax(out, x, geometry)


def dac_codes(out: torch.Tensor, padded: torch.Tensor, factor: torch.Tensor | float, geometry: list[int],
              bound: float | None, rounded: bool) -> torch.Tensor:
    """``out`` [B, K, L] = the columns of ``padded`` times ``factor``, clipped to +-``bound`` when given,
    rounded when ``rounded``; ``geometry`` is (kh, kw, stride h, w, dilation h, w, out h, out w)."""
    if not isinstance(factor, torch.Tensor):
        factor = torch.tensor([factor], dtype=padded.dtype)
    if factor.numel() not in (1, out.shape[0] * out.shape[-1]):
        raise ValueError(f"a scale of {factor.numel()} values for {out.shape[0] * out.shape[-1]} patches")
    limit = 0.0 if bound is None else float(bound)
    return _extension().dac_codes(out, padded, factor, geometry, -limit, limit, bound is not None, rounded)


def adc_(raw: torch.Tensor, multiplier: torch.Tensor | float, dim: int, bound: float, inverse_step: float | None,
         saturation: bool) -> torch.Tensor | None:
    """In place on ``raw`` (features on ``dim``, -1 or -2): clip to +-``bound``, times ``inverse_step``
    and rounded when it is given (the ADC), times ``multiplier`` (a number or one per input vector).
    Returns, with ``saturation``, which input vectors reached the bound (None when none did)."""
    outer = raw.shape[:-2].numel() if dim == -2 else raw.shape[:-1].numel()
    inner = raw.shape[-1] if dim == -2 else 1
    if not isinstance(multiplier, torch.Tensor):
        multiplier = torch.tensor([multiplier], dtype=raw.dtype)
    if multiplier.numel() not in (1, outer * inner):
        raise ValueError(f"multiplier of {multiplier.numel()} values for {outer * inner} input vectors")
    mask = torch.empty(raw.shape[:-2] + raw.shape[-1:] if dim == -2 else raw.shape[:-1], dtype=torch.uint8) \
        if saturation else None
    _extension().adc_(raw, multiplier, mask, outer, inner, bound, 1.0 if inverse_step is None else inverse_step,
                      inverse_step is not None)
    if mask is None or not mask.any():
        return None
    return mask.bool()
