"""Training objectives for multi-member models: independent members, and function-space repulsion.

``heads_nll``: every member fits the labels on its own (multi-head without repulsion, deep ensemble,
MC dropout). ``repulsive``: the update of methods.md section 11, ``phi_i = gamma_t s_i - r_i``, as one
scalar whose gradient is that update mapped through each member's Jacobian; its value stays the
members' mean cross-entropy so training curves remain readable.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F

from nora.errors import NoraError
from nora.models.multihead import member_logits, require_heads
from nora.uncertainty.repulsion import ESTIMATORS, SCHEDULES, annealing, repulsion
from nora.uncertainty.repulsion_sets import AUGMENTATIONS, RepulsionSource

SPACES = ("probs", "logits", "centered")


def members_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over members of each member's mean cross-entropy; logits ``[N, M, C]``."""
    n, m, c = logits.shape
    return F.cross_entropy(logits.reshape(n * m, c), y.repeat_interleave(m))


class HeadsNLL:
    """Each member's own cross-entropy, averaged (no interaction between members)."""

    def loss(self, model, x, y, context):
        return members_ce(member_logits(model, x), y)


def _number(name: str, value, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
        raise NoraError(f"repulsive objective: {name} must be a number >= {low}, got {value!r}")
    return float(value)


@contextlib.contextmanager
def _per_sample_noise_for(model, n_train: int, n_extra: int):
    """Per-sample training sigma (VANT) covers the labelled batch; the repulsion inputs join the same
    forward with the batch's mean factor, and the handle's factors are restored afterwards."""
    from nora.sim.injector import injector_of

    handle = injector_of(model)
    scale = getattr(handle, "sigma_scale", None)
    if not (isinstance(scale, torch.Tensor) and scale.ndim == 1 and len(scale) == n_train):
        yield
        return
    handle.sigma_scale = torch.cat([scale, scale.mean().expand(n_extra)])
    try:
        yield
    finally:
        handle.sigma_scale = scale


class Repulsive:
    """Repulsive last-layer (or full) ensemble training.

    Options: ``repulsion_set`` (augment | train | ood:<dataset>, with ``root`` for the OOD files),
    ``batch_size`` of repulsion inputs per step, ``estimator`` (kde | sge), ``space`` the kernel works
    in (probs | logits | centered logits), ``weight`` of the repulsion, ``schedule`` for gamma_t
    (constant | linear | cyclic | tanh, with ``cycles``/``power``/``warm``), ``prior_std`` for a
    Gaussian function-space prior on the repulsion logits (None: no prior score), ``bandwidth``
    (None: median heuristic), ``eta`` (SGE ridge), ``augmentations``, ``seed``.
    """

    def __init__(self, repulsion_set: str = "augment", batch_size: int = 8, estimator: str = "kde",
                 space: str = "probs", weight: float = 1.0, schedule: str = "constant", cycles: int = 1,
                 power: float = 1.0, warm: float = 0.5, prior_std: float | None = None,
                 bandwidth: float | None = None, eta: float = 1e-2,
                 augmentations: Sequence[str] = AUGMENTATIONS, root: str | None = None,
                 ood_subset: int | None = None, seed: int = 0):
        if estimator not in ESTIMATORS:
            raise NoraError(f"repulsive objective: estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        if space not in SPACES:
            raise NoraError(f"repulsive objective: space must be one of {', '.join(SPACES)}, got {space!r}")
        if schedule not in SCHEDULES:
            raise NoraError(f"repulsive objective: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
            raise NoraError(f"repulsive objective: cycles must be a positive integer, got {cycles!r}")
        self.estimator, self.space, self.schedule = estimator, space, schedule
        self.weight = _number("weight", weight)
        self.cycles, self.power, self.warm = cycles, _number("power", power), _number("warm", warm)
        self.prior_std = None if prior_std is None else _number("prior_std", prior_std, 1e-12)
        self.bandwidth = None if bandwidth is None else _number("bandwidth", bandwidth, 1e-12)
        self.eta = _number("eta", eta)
        self.source = RepulsionSource(repulsion_set, batch_size, seed=seed, root=root,
                                      augmentations=augmentations, ood_subset=ood_subset)
        self._heads: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def follows_training_length(self) -> bool:
        """gamma_t follows progress through the whole run (unless constant), so a run cannot be extended."""
        return self.schedule != "constant"

    def gamma(self, context) -> float:
        total = max(context.epochs * context.batches_per_epoch, 1)
        progress = (context.epoch * context.batches_per_epoch + context.batch_index) / total
        return annealing(self.schedule, progress, cycles=self.cycles, power=self.power, warm=self.warm)

    def loss(self, model, x, y, context):
        head = self._heads.get(model)
        if head is None:  # looked up once per model, not by walking its modules at every step
            head = self._heads[model] = require_heads(model, "the repulsive objective")
        n = len(x)
        xr = self.source.batch(x, context.epoch, context.batch_index)
        previous, head.per_head = head.per_head, True
        try:
            with _per_sample_noise_for(model, n, len(xr)):
                logits = model(torch.cat([x, xr]))  # one forward over labelled and repulsion inputs
        finally:
            head.per_head = previous
        if logits.shape[1] < 2:
            raise NoraError("the repulsive objective needs at least 2 members in training "
                            "(MC dropout draws one mask per sample while training; use multihead or ensemble)")
        with torch.no_grad():
            ce, grad = self.logit_gradient(logits.detach(), y, self.gamma(context))
        # One backward: the surrogate's gradient is J^T grad, i.e. gamma * grad CE + weight/M * J^T r
        # (+ gamma * the prior's); its value is 0, so the loss reads as the members' mean CE.
        surrogate = (logits * grad).sum()
        return ce + (surrogate - surrogate.detach())

    def logit_gradient(self, z: torch.Tensor, y: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' mean CE on the labelled rows of ``z`` ``[N + B, M, C]`` and the update as a
        gradient on all of ``z``: labelled rows ``gamma (softmax - onehot) / (N M)``; repulsion rows
        ``weight / M`` times the repulsion ``r`` (from the members' function values, ``r`` held fixed)
        mapped back through the function values' Jacobian, plus the prior's ``gamma z / (B M s^2)``.

        The softmax is written out: torch's CPU (log-)softmax over a last dimension of ~10 classes
        costs several times these few elementwise kernels."""
        n, (b, m, _) = len(y), z[len(y):].shape
        shifted = z - z.amax(-1, keepdim=True)
        exp = shifted.exp()
        total = exp.sum(-1, keepdim=True)
        p = exp / total
        label = y.reshape(n, 1, 1).expand(n, m, 1)
        ce = (total[:n].log() - shifted[:n].gather(-1, label)).mean()
        scale = gamma / (n * m)
        train = (p[:n] * scale).scatter_(-1, label, -scale, reduce="add")
        zr, pr = z[n:], p[n:]
        f = pr if self.space == "probs" else zr - zr.mean(-1, keepdim=True) if self.space == "centered" else zr
        r = repulsion(f, self.estimator, self.bandwidth, self.eta, dim=-2) * (self.weight / m)  # [B, M, C]
        if self.space == "probs":  # d<softmax(z), r>/dz = p * (r - <p, r>)
            r = pr * (r - (pr * r).sum(-1, keepdim=True))
        # centred logits: centring is its own transpose, and r, a combination of differences of centred
        # values, is centred already, so J^T r = r as for plain logits
        if self.prior_std is not None:  # gradient of the (sample, member) mean of ||z||^2 / (2 s^2)
            r = r + zr * (gamma / (b * m * self.prior_std ** 2))
        return ce, torch.cat([train, r])
