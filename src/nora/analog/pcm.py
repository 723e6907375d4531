"""The phase-change-memory statistical model (Nandakumar et al. ICECS 2019; Joshi et al. Nat. Commun. 2020).

Each weight is a differential pair of devices (g+ for the positive part, g- for the negative part,
the other device targeted at 0). Conductances are in microsiemens; ``g_rel = g_T / g_max`` is the
target relative to the largest programmable conductance. The three pieces, as published:

* programming noise (once per programmed chip): ``g_prog = max(g_T + N(0, s_prog^2), 0)``,
  ``s_prog = max(sum_i c_i g_rel^i, 0)`` (c = 0.26348, 1.9650, -1.1731; microsiemens);
* drift: ``g(t) = g_prog (t / t0)^-nu`` for ``t > t0``, ``nu ~ N(mu_nu, s_nu^2)`` clipped at 0, drawn
  once per device, ``mu_nu = clip(-0.0155 ln g_rel + 0.0244, 0.049, 0.1)``,
  ``s_nu = clip(-0.0125 ln g_rel - 0.0059, 0.008, 0.045)``;
* 1/f read noise (fresh per read): relative std ``Q_s sqrt(ln((t + t_read) / (2 t_read)))``,
  ``Q_s = min(0.0088 / g_rel^0.65, 0.2)``; zero until ``t`` reaches ``t_read``.

(decision) ``g_rel`` in the logarithms is clipped below at 1e-6 so a device targeted at 0 gets the
largest drift spread and read noise of the fit's range rather than infinities.
"""

from __future__ import annotations

import math

import torch

_G_FLOOR = 1e-6


def prog_std(g_rel: torch.Tensor, coeff: tuple[float, ...]) -> torch.Tensor:
    """Programming-noise std in microsiemens: the polynomial of the relative target, clipped at 0."""
    out = torch.zeros_like(g_rel)
    power = torch.ones_like(g_rel)
    for c in coeff:
        out = out + c * power
        power = power * g_rel
    return out.clamp(min=0.0)


def drift_mean(g_rel: torch.Tensor) -> torch.Tensor:
    return (-0.0155 * torch.log(g_rel.clamp(min=_G_FLOOR)) + 0.0244).clamp(0.049, 0.1)


def drift_std(g_rel: torch.Tensor) -> torch.Tensor:
    return (-0.0125 * torch.log(g_rel.clamp(min=_G_FLOOR)) - 0.0059).clamp(0.008, 0.045)


def read_q(g_rel: torch.Tensor) -> torch.Tensor:
    return (0.0088 / g_rel.clamp(min=_G_FLOOR) ** 0.65).clamp(max=0.2)


def read_factor(t: float, t_read: float) -> float:
    """``sqrt(ln((t + t_read) / (2 t_read)))``, 0 before the first read window has passed."""
    ratio = (t + t_read) / (2 * t_read)
    return math.sqrt(math.log(ratio)) if ratio > 1 else 0.0


def drift_factor(nu: torch.Tensor, t: float, t0: float) -> torch.Tensor:
    """``(t / t0)^-nu`` after t0; 1 before (the devices are read at t0 first, as in the published model)."""
    return (max(t, t0) / t0) ** (-nu)


def program(w_norm: torch.Tensor, device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Program normalised weights (|w| <= 1) on device pairs: conductances and drift exponents, drawn once."""
    g_max = device.g_max
    pos = w_norm.clamp(min=0) * g_max
    neg = (-w_norm).clamp(min=0) * g_max
    target = torch.stack([pos, neg])
    g_rel = target / g_max
    noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
    g_prog = (target + device.prog_noise_scale * prog_std(g_rel, device.prog_coeff) * noise).clamp(min=0.0)
    nu_noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=target.dtype)
    nu = (drift_mean(g_rel) + drift_std(g_rel) * nu_noise).clamp(min=0.0) * device.drift_scale
    return {"g_prog": g_prog, "nu": nu, "q": read_q(g_rel) * device.read_noise_scale}


def conductances_at(state: dict[str, torch.Tensor], t: float, device) -> torch.Tensor:
    """Drifted conductances (pair stacked on dim 0) at ``t`` seconds after programming, no read noise."""
    return state["g_prog"] * drift_factor(state["nu"], t, device.t0)


def read(g_drift: torch.Tensor, q: torch.Tensor, t: float, device, generator: torch.Generator | None) -> torch.Tensor:
    """One read of the pairs: drifted conductance plus 1/f noise; returns the normalised weight g+ - g-."""
    factor = read_factor(t, device.t_read)
    g = g_drift
    if factor > 0 and generator is not None:
        noise = torch.randn(g.shape, generator=generator, device=g.device, dtype=g.dtype)
        g = g + g * (q * factor) * noise
    return (g[0] - g[1]) / device.g_max
