"""In-memory datasets and a batch loader that slices whole tensors.

Every supported dataset fits in memory, so batches are cut from the full tensors with one index
operation each; a per-sample ``torch.utils.data.DataLoader`` would spend most of an epoch in Python.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from nora.errors import NoraError
from nora.seeds import SeedTree

AUGMENTATIONS = ("cifar",)
_CROP_PADDING = 4


class ArrayDataset:
    """Inputs ``x`` (float32) and integer labels ``y`` held as whole tensors.

    ``mean``/``std`` record the normalisation already applied to ``x`` (per channel for images, per
    coefficient for audio features, ``None`` for raw [0, 1] data) so that augmentation can pad with
    true black and exporters can undo it.
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        *,
        name: str,
        class_names: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        source: str | None = None,
        split: str | None = None,
    ):
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y, dtype=torch.int64)
        if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise NoraError(f"dataset '{name}': inputs {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        self.x = x
        self.y = y
        self.name = name
        self.class_names = [str(c) for c in class_names]
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.source = source
        self.split = split
        self._sha256: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def content_hash(self) -> str:
        """sha256 of the samples as used (shapes, inputs after normalisation, labels); computed once.

        Recorded in model.json so that a result can be traced to the exact data, whatever file or
        folder it was read from.
        """
        if self._sha256 is None:
            digest = hashlib.sha256(f"{tuple(self.x.shape)}|{tuple(self.y.shape)}|".encode())
            for tensor in (self.x, self.y):  # flat byte views: no copy of a contiguous tensor
                digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).reshape(-1).view(np.uint8))
            self._sha256 = digest.hexdigest()
        return self._sha256

    def describe(self) -> dict[str, Any]:
        """What a checkpoint should record about the data it was trained or evaluated on."""
        return {
            "name": self.name,
            "path": self.source,
            "split": self.split,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "samples": len(self),
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "sha256": self.content_hash(),
        }

    def __repr__(self) -> str:
        return f"ArrayDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, classes={self.num_classes})"

    def subset(self, n_or_indices: int | Sequence[int] | torch.Tensor | np.ndarray) -> ArrayDataset:
        """``n`` samples spread evenly over the dataset (all if fewer), or the given indices or mask.

        Evenly spread rather than the first ``n``: image-folder data sets are sorted by class, and a
        quick run on their first samples would see only a few classes.
        """
        if isinstance(n_or_indices, (int, np.integer)):
            n = int(n_or_indices)
            if n < 0:
                raise NoraError(f"subset size must be >= 0, got {n}")
            n = min(n, len(self))
            index = torch.div(torch.arange(n) * len(self), max(n, 1), rounding_mode="floor")
            x, y = self.x[index], self.y[index]
        else:
            index = torch.as_tensor(np.asarray(n_or_indices)).reshape(-1)
            if index.dtype == torch.bool:
                if index.numel() != len(self):
                    raise NoraError(f"subset mask has {index.numel()} entries for {len(self)} samples")
                index = index.nonzero().view(-1)
            index = index.to(torch.int64)
            if index.numel() and (int(index.min()) < -len(self) or int(index.max()) >= len(self)):
                raise NoraError(f"subset indices out of range for dataset '{self.name}' with {len(self)} samples")
            x, y = self.x[index], self.y[index]
        return ArrayDataset(x, y, name=self.name, class_names=self.class_names, mean=self.mean, std=self.std,
                            source=self.source, split=self.split)


class BatchLoader:
    """Re-iterable batches; epoch ``e`` is shuffled and augmented from ``(seed, e)`` alone.

    Each ``iter()`` uses the current epoch and then advances it, so successive epochs differ while a
    rerun with the same seed repeats exactly; ``set_epoch`` jumps to an epoch (e.g. on resume).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int = 128,
        shuffle: bool = True,
        augment: str | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if int(batch_size) < 1:
            raise NoraError(f"batch_size must be >= 1, got {batch_size}")
        if augment is not None and augment not in AUGMENTATIONS:
            raise NoraError(f"unknown augmentation {augment!r}; choose from {', '.join(AUGMENTATIONS)} or None")
        if augment == "cifar" and dataset.x.ndim != 4:
            raise NoraError(f"augment='cifar' needs images [N, C, H, W]; dataset '{dataset.name}' has {dataset.input_shape}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._pad_value = _pad_value(dataset) if augment == "cifar" else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.dataset.x, self.dataset.y
        generator = SeedTree(self.seed).child("epoch", epoch).generator()
        order = torch.randperm(len(y), generator=generator) if self.shuffle else None
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(y))
            if order is None:
                xb, yb = x[start:stop], y[start:stop]
            else:
                index = order[start:stop]
                xb, yb = x.index_select(0, index), y.index_select(0, index)
            if self.augment == "cifar":
                xb = crop_flip(xb, generator, self._pad_value)
            yield xb, yb


def make_loader(
    dataset: ArrayDataset,
    batch_size: int = 128,
    shuffle: bool = True,
    augment: str | None = None,
    seed: int = 0,
    drop_last: bool = False,
) -> BatchLoader:
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, augment=augment, seed=seed, drop_last=drop_last)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad_value: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop with 4-pixel padding plus random horizontal flip, as one gather for the batch.

    Each sample's offset and flip become a flat index into its padded image, so the batch costs a
    single ``gather`` instead of a Python loop over samples.
    """
    n, c, h, w = x.shape
    p = _CROP_PADDING
    padded_w = w + 2 * p
    if pad_value is None:
        padded = x.new_zeros(n, c, h + 2 * p, padded_w)
    else:
        padded = pad_value.to(x.dtype).view(1, c, 1, 1).repeat(n, 1, h + 2 * p, padded_w)
    padded[:, :, p : p + h, p : p + w] = x
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))
    index = (rows[:, :, None] * padded_w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.view(n, c, -1).gather(2, index).view(n, c, h, w)


def normalised_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to float32 ``(x / 255 - mean) / std`` per channel, in place after one copy."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    shape = (1, len(mean), 1, 1)
    x.sub_(torch.tensor(mean).mul(255.0).view(shape)).mul_(1.0 / torch.tensor(std).mul(255.0).view(shape))
    return x


def _pad_value(dataset: ArrayDataset) -> torch.Tensor | None:
    """Black in the dataset's normalised units, matching padding applied before normalisation."""
    channels = dataset.x.shape[1]
    if dataset.mean is None or dataset.std is None or len(dataset.mean) != channels:
        return None
    return -torch.tensor(dataset.mean) / torch.tensor(dataset.std)

