"""Inputs on which members are pushed apart: label-destroying augmentations, an OOD set, or training inputs.

The research finds repulsion on the training inputs themselves makes the members underfit; the
other two sources are where diversity helps. Every batch is drawn from a seed-tree node keyed by
(epoch, batch), so a resumed run sees the same repulsion batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nora.errors import NoraError
from nora.seeds import SeedTree

AUGMENTATIONS = ("patches", "blend")


def shuffle_patches(x: torch.Tensor, generator: torch.Generator, grid: int = 4) -> torch.Tensor:
    """Cut each image into ``grid x grid`` patches and permute them per sample (shape kept, class lost)."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    if ph == 0 or pw == 0:
        raise NoraError(f"patch shuffling needs images of at least {grid}x{grid}, got {h}x{w}")
    out = x.clone()
    core = x[:, :, : ph * grid, : pw * grid].reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5)
    core = core.reshape(b, grid * grid, c, ph, pw)
    order = torch.rand(b, grid * grid, generator=generator).argsort(1).to(x.device)
    core = core.gather(1, order.view(b, -1, 1, 1, 1).expand_as(core))
    core = core.view(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, ph * grid, pw * grid)
    out[:, :, : ph * grid, : pw * grid] = core
    return out


def blend(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The average of each input and another, randomly chosen input of the batch."""
    partner = torch.randint(0, len(x), (len(x),), generator=generator).to(x.device)
    return 0.5 * (x + x[partner])


def label_destroying(x: torch.Tensor, generator: torch.Generator, kinds=AUGMENTATIONS) -> torch.Tensor:
    """Each sample gets one of ``kinds`` at random (patch shuffling needs images ``[B, C, H, W]``)."""
    unknown = sorted(set(kinds) - set(AUGMENTATIONS))
    if unknown or not kinds:
        raise NoraError(f"unknown label-destroying augmentation {unknown or kinds!r}; choose from {', '.join(AUGMENTATIONS)}")
    kinds = [k for k in kinds if k != "patches" or x.ndim == 4]
    if not kinds:
        raise NoraError(f"patch shuffling needs images [B, C, H, W]; inputs have shape {tuple(x.shape[1:])}")
    variants = torch.stack([shuffle_patches(x, generator) if k == "patches" else blend(x, generator) for k in kinds])
    pick = torch.randint(0, len(kinds), (len(x),), generator=generator).to(x.device)
    return variants[pick, torch.arange(len(x), device=x.device)]


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
    """Yields the repulsion batch for one training step from ``augment``, ``train`` or ``ood:<dataset>``."""

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

    def _ood_inputs(self, expected) -> torch.Tensor:
        if self._ood is None:
            data = load_ood(self.dataset, split="train", root=self.root, subset=self.ood_subset)
            check_shape(f"repulsion set {self.spec!r}", data.input_shape, expected)
            self._ood = data.x
        return self._ood

    def batch(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        generator = self.seeds.child(epoch, step).generator()
        if self.kind == "ood":
            pool = self._ood_inputs(x.shape[1:])
            index = torch.randint(0, len(pool), (self.batch_size,), generator=generator)
            return pool[index].to(x.device)
        chosen = x[torch.randperm(len(x), generator=generator)[: self.batch_size].to(x.device)]
        return chosen if self.kind == "train" else label_destroying(chosen, generator, self.augmentations)
