"""A compiled one-pass bank draw for one noise level per sample (optional: the ``fast`` extra).

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

The same module draws exact mode's large draws in parallel: the parts of one draw, each from its own
generator, on torch's intra-op threads (``normal_parts``); torch's CPU generator draws on one thread.
"""

from __future__ import annotations

import torch

from nora.compiled import build

#: Below this many values the two torch passes cost no more than calling the kernel.
MIN_VALUES = 1 << 15
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

torch::Tensor per_sample_draw(torch::Tensor out, c10::optional<torch::Tensor> x, torch::Tensor values,
                              torch::Tensor signs, torch::Tensor sigma) {
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "per_sample_draw", [&] {
    per_sample<scalar_t>(out.data_ptr<scalar_t>(), x ? x->data_ptr<scalar_t>() : nullptr,
                         values.data_ptr<scalar_t>(), signs.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(),
                         n, n / out.size(0), signs.numel());
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

// Part p of flat (part values from p * part on) filled with N(0, 1) from generators[p], the parts on
// torch's intra-op threads: each part is torch's own normal_ on its slice, so the bits are those of
// filling the parts one after another.
void normal_parts(torch::Tensor flat, std::vector<at::Generator> generators, int64_t part) {
  const int64_t n = flat.numel();
  at::parallel_for(0, (int64_t)generators.size(), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) flat.narrow(0, p * part, std::min(part, n - p * part)).normal_(0.0, 1.0, generators[p]);
  });
}
"""


def _extension():
    """The built kernel module, or None where it cannot be built."""
    return build("nora_noise_kernels", _SOURCE, ("per_sample_draw", "normal_parts", "bank_add"), "noise kernels")


def normal_parts(flat: torch.Tensor, generators: list[torch.Generator], part: int) -> torch.Tensor:
    """Fill ``flat`` (1-d, CPU) part by part, ``part`` values from ``generators[p]`` for part p: in
    parallel where the kernel is built, else one part after another (the same bits)."""
    if -(-flat.numel() // part) != len(generators):
        raise ValueError(f"{len(generators)} generators for {flat.numel()} values in parts of {part}")
    extension = _extension()
    if extension is not None:
        extension.normal_parts(flat, generators, part)
        return flat
    for piece, generator in zip(flat.split(part), generators):
        piece.normal_(generator=generator)
    return flat


def takes_scalar(x: torch.Tensor) -> bool:
    """Whether ``bank_add`` takes ``x``: CPU, a built dtype, contiguous, and the kernel built."""
    return x.device.type == "cpu" and x.dtype in DTYPES and x.is_contiguous() and _extension() is not None


def bank_add(out: torch.Tensor, x: torch.Tensor, bank: torch.Tensor, signs: torch.Tensor, start: int, rotation: int,
             length: int, sigma: float) -> torch.Tensor:
    """``out = x + (sigma * bank[start + i]) * signs[rotation + i mod length]`` in one call (``out``
    may be ``x``), as torch's ``addcmul`` of the two windows computes it."""
    return _extension().bank_add(out, x, bank, signs, start, rotation, length, sigma)


def usable(x: torch.Tensor, sigma: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` with this level and pays off: CPU, a built dtype, contiguous,
    at least ``MIN_VALUES`` values, one level per sample (shaped [batch, 1, ...]), and the kernel built."""
    return (
        x.numel() >= MIN_VALUES and x.device.type == "cpu" and x.dtype in DTYPES and x.is_contiguous()
        and sigma.dtype == x.dtype and sigma.device == x.device and sigma.dim() == x.dim()
        and sigma.shape[0] == sigma.numel() == x.shape[0] and sigma.is_contiguous() and _extension() is not None
    )


def add_scaled_draw(out: torch.Tensor, x: torch.Tensor, values: torch.Tensor, signs: torch.Tensor,
                    sigma: torch.Tensor) -> torch.Tensor:
    """``out = x + (values * signs) * sigma_b`` in one pass (``out`` may be ``x``): ``values`` is the
    draw's bank window (x.numel() values), ``signs`` its L-long rotation of the sign pattern."""
    return _extension().per_sample_draw(out, x, values, signs, sigma)


def scaled_draw(out: torch.Tensor, values: torch.Tensor, signs: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``out = (values * signs) * sigma_b``: a draw with its per-sample level folded in, in one pass."""
    return _extension().per_sample_draw(out, None, values, signs, sigma)


class AddBankNoise(torch.autograd.Function):
    """``x + sigma_b * z`` out of place in a graph that needs gradients: the noise does not depend on
    ``x``, so the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x, values, signs, sigma):  # noqa: D102 - torch's interface
        return add_scaled_draw(torch.empty_like(x), x, values, signs, sigma)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad, None, None, None
