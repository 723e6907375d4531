"""Function-space repulsion between ensemble members (methods.md section 11).

Each member i is a point f_i in function space: its outputs on a batch of repulsion inputs,
flattened. With the RBF kernel ``k(f_i, f_j) = exp(-||f_i - f_j||^2 / (2h))`` and the median
bandwidth ``h = median_{i<j} ||f_i - f_j||^2 / (2 log(M + 1))``, the repulsion is an estimate of
the score of the members' own density, ``r_i ~ grad log rho(f_i)``:

* KDE: ``r_i = sum_j grad_{f_i} k(f_i, f_j) / sum_j k(f_i, f_j)``;
* SGE (Stein gradient estimator, Li & Turner 2018): ``r = -(K + eta I)^-1 B`` with
  ``B_i = sum_j grad_{f_j} k(f_j, f_i)``.

The update of member i is ``phi_i = gamma_t * s_i - r_i`` (s_i the likelihood and prior score),
pushed to the weights by a vector-Jacobian product: the objective maps ``r`` (held fixed) through
the function values' Jacobian to a gradient ``g`` on the logits and backpropagates the surrogate
``<z, g>``, whose gradient is exactly ``J^T g``, in the same backward as the likelihood.
"""

from __future__ import annotations

import functools
import math

import torch

from nora.errors import NoraError

ESTIMATORS = ("kde", "sge")


def pairwise_sq_dists(f: torch.Tensor) -> torch.Tensor:
    """``[..., M, D]`` points -> ``[M, M]`` squared Euclidean distances, summed over the leading dims
    too (each member's point is all of them); exact zeros on the diagonal (f_i - f_i = 0)."""
    d = (f[..., :, None, :] - f[..., None, :, :]).pow(2).sum(-1)
    return d.sum(tuple(range(d.ndim - 2))) if d.ndim > 2 else d


@functools.lru_cache(maxsize=8)
def _upper(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs i < j of an M x M matrix, built once per (M, device): this runs at every step."""
    return torch.triu_indices(m, m, offset=1, device=device).unbind()


def median_bandwidth(sq_dists: torch.Tensor) -> torch.Tensor:
    """``h = median_{i<j} d_ij / (2 log(M + 1))``, floored so identical members still give a finite kernel."""
    m = sq_dists.shape[0]
    h = sq_dists[_upper(m, sq_dists.device)].median() / (2.0 * math.log(m + 1))
    return h.clamp_min(1e-8)


def rbf(f: torch.Tensor, h: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel matrix ``K`` and the bandwidth used (median heuristic when ``h`` is None)."""
    d = pairwise_sq_dists(f)
    h = median_bandwidth(d) if h is None else torch.as_tensor(h, dtype=f.dtype, device=f.device)
    return (d / (-2.0 * h)).exp(), h


def kde_score(f: torch.Tensor, h: torch.Tensor | float | None = None) -> torch.Tensor:
    """KDE estimate of ``grad log rho`` at every member of ``f`` ``[..., M, D]``: ``sum_j grad_{f_i} k_ij / sum_j k_ij``."""
    k, h = rbf(f, h)
    # grad_{f_i} k(f_i, f_j) = -(f_i - f_j) / h * k_ij; over sum_j k_ij: (K f / sum_j k_ij - f_i) / h
    return (k @ f / k.sum(1, keepdim=True) - f) / h


def sge_score(f: torch.Tensor, h: torch.Tensor | float | None = None, eta: float = 1e-2) -> torch.Tensor:
    """Stein gradient estimate of ``grad log rho`` (``f`` ``[..., M, D]``): ``-(K + eta I)^-1 B``,
    ``B_i = sum_j grad_{f_j} k(f_j, f_i)``."""
    k, h = rbf(f, h)
    # grad_{f_j} k(f_j, f_i) = -(f_j - f_i) / h * k_ji; summed over j: (k.sum * f_i - K f) / h
    b = (k.sum(1, keepdim=True) * f - k @ f) / h
    eye = torch.eye(f.shape[-2], dtype=f.dtype, device=f.device)
    return -torch.linalg.solve(k + eta * eye, b)


def repulsion(f: torch.Tensor, estimator: str = "kde", h: float | None = None, eta: float = 1e-2,
              dim: int = 0) -> torch.Tensor:
    """``r_i`` for the members of ``f``, returned in ``f``'s shape. ``dim`` is where the members lie:
    0 for ``[M, ...]`` (flattened per member), -2 for ``[..., M, C]`` as the heads' logits ``[B, M, C]``
    come (used as they are, no transposed copy)."""
    if estimator not in ESTIMATORS:
        raise NoraError(f"unknown repulsion estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if dim not in (0, -2):
        raise NoraError(f"repulsion: members lie on dim 0 or -2, got {dim}")
    if f.shape[dim] < 2:
        raise NoraError(f"repulsion needs at least 2 members, got {f.shape[dim]}")
    x = f.detach().to(torch.float64)
    x = x.reshape(f.shape[0], -1) if dim == 0 else x
    r = kde_score(x, h) if estimator == "kde" else sge_score(x, h, eta)
    return r.to(f.dtype).view_as(f)


def annealing(schedule: str, progress: float, *, cycles: int = 1, power: float = 1.0, warm: float = 0.5) -> float:
    """gamma_t in [0, 1] for training progress in [0, 1]: how strongly the likelihood drives vs repulsion.

    ``constant``: 1. ``linear``: rises to 1 over the first ``warm`` fraction. ``cyclic`` (D'Angelo et
    al.'s annealed SVGD): ``(t mod T/c / (T/c))^power`` over ``cycles`` cycles, then 1 in the last
    tenth. ``tanh``: ``tanh((1.3 t)^power)``.
    """
    t = min(max(float(progress), 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 if warm <= 0 else min(1.0, t / warm)
    if schedule == "cyclic":
        if t >= 0.9:
            return 1.0
        period = 0.9 / cycles
        return ((t % period) / period) ** power
    if schedule == "tanh":
        return math.tanh((1.3 * t) ** power)
    raise NoraError(f"unknown annealing schedule {schedule!r}; choose constant, linear, cyclic or tanh")


SCHEDULES = ("constant", "linear", "cyclic", "tanh")
