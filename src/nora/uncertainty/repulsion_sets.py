"""Inputs on which members are pushed apart: label-destroying augmentations, an OOD set, or training inputs.

The research finds repulsion on the training inputs themselves makes the members underfit; the
other two sources are where diversity helps. The random choices of a block of consecutive steps are
drawn at once from the seed-tree node ``repulsion/epoch/block`` (on the inputs' device; for an OOD
set on the host, where its pool lies), so a resumed run sees the same repulsion batches, and a
training step only gathers its batch: a few tensor operations, no host round trip.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from nora.errors import NoraError
from nora.seeds import SeedTree

AUGMENTATIONS = ("patches", "blend")
_BLOCK_STEPS = 64  # steps whose draws are made together (fewer for large inputs)
_BLOCK_ELEMENTS = 1 << 20  # bound on the int64 gather indices one block keeps


@functools.lru_cache(maxsize=16)
def _patch_maps(h: int, w: int, grid: int, device: torch.device):
    """Per pixel (flattened): the patch it lies in, its offset inside that patch and whether it lies in
    the shuffled core (a border that ``grid`` does not divide stays put); per patch: its top-left pixel."""
    ph, pw = h // grid, w // grid
    i, j = torch.arange(h, device=device)[:, None], torch.arange(w, device=device)[None, :]
    inside = (i < ph * grid) & (j < pw * grid)
    patch = torch.where(inside, (i // ph) * grid + j // pw, 0)
    offset = torch.where(inside, (i % ph) * w + j % pw, i * w + j)
    p = torch.arange(grid * grid, device=device)
    origin = (p // grid) * ph * w + (p % grid) * pw
    return patch.flatten(), offset.flatten(), inside.flatten().to(torch.long), origin


def destroying_sources(chosen: torch.Tensor, shape, generator: torch.Generator, kinds=AUGMENTATIONS,
                       grid: int = 4) -> torch.Tensor:
    """Where each pixel of a label-destroyed input comes from, for the batch rows ``chosen`` ``[..., k]``.

    Each output gets one of ``kinds`` at random: ``patches`` cuts the image (``shape`` ``[C, H, W]``)
    into ``grid x grid`` patches and permutes them; ``blend`` averages it with another, randomly chosen
    one of the ``k``. Returns flat indices into the batch ``[..., 2, k, prod(shape)]``: each output is
    the mean of the two values they pick (the same value twice for a shuffled image).
    """
    unknown = sorted(set(kinds) - set(AUGMENTATIONS))
    if unknown or not kinds:
        raise NoraError(f"unknown label-destroying augmentation {unknown or kinds!r}; choose from {', '.join(AUGMENTATIONS)}")
    shape = tuple(shape)
    kinds = [k for k in kinds if k != "patches" or len(shape) == 3]
    if not kinds:
        raise NoraError(f"patch shuffling needs images [B, C, H, W]; inputs have shape {shape}")
    share = kinds.count("patches") / len(kinds)  # each output: shuffled with this probability, else blended
    device, numel = chosen.device, math.prod(shape)
    channels = shape[0] if share else 1
    pixels = torch.arange(numel // channels, device=device).expand(*chosen.shape, -1)
    other = chosen
    if share:
        _, h, w = shape
        if h // grid == 0 or w // grid == 0:
            raise NoraError(f"patch shuffling needs images of at least {grid}x{grid}, got {h}x{w}")
        patch, offset, inside, origin = _patch_maps(h, w, grid, device)
        order = torch.rand(*chosen.shape, grid * grid, generator=generator, device=device).argsort(-1)
        shuffled = offset + origin[order][..., patch] * inside  # output patch q shows input patch order[q]
    if share < 1:
        partner = torch.randint(0, chosen.shape[-1], chosen.shape, generator=generator, device=device)
        other = chosen.gather(-1, partner)
    if share == 1:
        pixels = shuffled
    elif share:
        patches = torch.rand(chosen.shape, generator=generator, device=device) < share
        pixels = torch.where(patches[..., None], shuffled, pixels)
        other = torch.where(patches, chosen, other)
    planes = (torch.arange(channels, device=device) * pixels.shape[-1])[:, None]  # channel offsets [C, 1]
    pixels = (planes + pixels[..., None, :]).flatten(-2)
    return torch.stack([chosen, other], -2)[..., None] * numel + pixels[..., None, :, :]


def gather_mean(x: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """``[k, ...]`` inputs, each the mean of the two values of ``x`` at flat indices ``sources`` ``[2, k, n]``."""
    return x.reshape(-1)[sources].mean(0).view(sources.shape[1], *x.shape[1:])


def label_destroying(x: torch.Tensor, generator: torch.Generator, kinds=AUGMENTATIONS) -> torch.Tensor:
    """Every input of ``x`` with one of ``kinds`` applied at random (patch shuffling needs ``[B, C, H, W]``)."""
    chosen = torch.arange(len(x), device=generator.device)
    return gather_mean(x, destroying_sources(chosen, x.shape[1:], generator, kinds).to(x.device))


def locate_root(dataset: str, root: str | None, like: str | None = None) -> str | None:
    """``root`` if given; else a folder named ``dataset`` beside ``like`` (another data set's root) if it exists."""
    if root is not None:
        return root
    if like is not None:
        sibling = Path(like).expanduser().parent / dataset
        if sibling.is_dir():
            return str(sibling)
    return None


def load_ood(dataset: str, split: str = "test", root: str | None = None, like: str | None = None,
             subset: int | None = None):
    """An unlabelled (labels unused) data set, located as ``locate_root`` says."""
    from nora.data import load_dataset

    data = load_dataset(dataset, split=split, root=locate_root(dataset, root, like))
    return data.subset(subset) if subset else data


def check_shape(what: str, shape, expected) -> None:
    if tuple(shape) != tuple(expected):
        raise NoraError(f"{what} has input shape {tuple(shape)} but the model takes {tuple(expected)}")


class RepulsionSource:
    """Yields the repulsion batch for one training step from ``augment``, ``train`` or ``ood:<dataset>``.

    ``augment``/``train`` take ``batch_size`` distinct inputs of the step's training batch (then
    label-destroyed, or as they are); ``ood`` draws them from the set's training split."""

    def __init__(self, spec: str, batch_size: int, seed: int = 0, root: str | None = None,
                 augmentations=AUGMENTATIONS, ood_subset: int | None = None):
        spec = str(spec)
        self.kind, _, self.dataset = spec.partition(":")
        if self.kind not in ("augment", "train", "ood") or (self.kind == "ood") != bool(self.dataset):
            raise NoraError(f"repulsion_set must be augment, train or ood:<dataset>, got {spec!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise NoraError(f"repulsion batch_size must be a positive integer, got {batch_size!r}")
        self.spec, self.batch_size, self.root, self.ood_subset = spec, batch_size, root, ood_subset
        self.augmentations = tuple(augmentations)
        if self.kind == "augment":
            label_destroying(torch.zeros(1, 1, 8, 8), torch.Generator(), self.augmentations)  # validates names
        self.seeds = SeedTree(seed).child("repulsion")
        self._ood = None
        self._plan: tuple[tuple, tuple[torch.Tensor, ...]] | None = None

    def _ood_inputs(self, expected) -> torch.Tensor:
        if self._ood is None:
            data = load_ood(self.dataset, split="train", root=self.root, subset=self.ood_subset)
            check_shape(f"repulsion set {self.spec!r}", data.input_shape, expected)
            self._ood = data.x
        return self._ood

    def _block_steps(self, shape) -> int:
        per_step = self.batch_size * (2 * math.prod(shape) if self.kind == "augment" else 1)
        return max(1, min(_BLOCK_STEPS, _BLOCK_ELEMENTS // per_step))

    def _draws(self, epoch: int, step: int, x: torch.Tensor) -> tuple[int, tuple[torch.Tensor, ...]]:
        """The draws of the block holding ``step`` (made once per block and kept) and ``step``'s row."""
        steps = self._block_steps(x.shape[1:])
        block, row = divmod(step, steps)
        pool = self._ood_inputs(x.shape[1:]) if self.kind == "ood" else None
        device = torch.device("cpu") if pool is not None else x.device  # the OOD pool stays on the host
        key = (epoch, block, len(x), tuple(x.shape[1:]), device)
        if self._plan is None or self._plan[0] != key:
            generator = self.seeds.child(epoch, block).generator(device)
            if pool is not None:
                draws = (torch.randint(0, len(pool), (steps, self.batch_size), generator=generator),)
            else:  # batch_size distinct rows of the batch per step: the first of a random permutation
                chosen = torch.rand(steps, len(x), generator=generator, device=device).argsort(1)[:, : self.batch_size]
                draws = (chosen if self.kind == "train" else
                         destroying_sources(chosen, x.shape[1:], generator, self.augmentations),)
            self._plan = (key, draws)
        return row, self._plan[1]

    def batch(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        row, draws = self._draws(epoch, step, x)
        if self.kind == "ood":
            return self._ood[draws[0][row]].to(x.device)
        if self.kind == "train":
            return x[draws[0][row]]
        return gather_mean(x, draws[0][row])
