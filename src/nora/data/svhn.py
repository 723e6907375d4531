"""SVHN cropped digits from the official ``train_32x32.mat`` / ``test_32x32.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nora.data.arrays import ArrayDataset, normalised_images
from nora.errors import NoraError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
# Per-channel mean/std of the SVHN train split (73,257 images), as commonly quoted; fixed constants
# keep the test split on the training statistics without loading the 182 MB training file.
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)


def present(root: Path) -> bool:
    return all((root / name).is_file() for name in FILES.values())


def load_svhn(root: Path, split: str) -> ArrayDataset:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    path = root / FILES[split]
    if not path.is_file():
        raise NoraError(f"dataset 'svhn': {path} not found")
    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (MatReadError, ValueError, OSError, TypeError, IndexError, KeyError, NotImplementedError) as exc:
        raise NoraError(f"SVHN file {path} is corrupt or not a MATLAB v5 file: {exc}") from None
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None:
        raise NoraError(f"SVHN file {path} lacks the 'X' or 'y' variable")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != labels.shape[0]:
        raise NoraError(f"SVHN file {path}: X is {images.shape} with {labels.shape[0]} labels, expected [32, 32, 3, N]")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise NoraError(f"SVHN file {path}: labels outside 1-10")
    labels[labels == 10] = 0  # SVHN stores digit 0 as class 10
    x = normalised_images(images.astype(np.uint8, copy=False).transpose(3, 2, 0, 1), MEAN, STD)
    return ArrayDataset(x, labels, name="svhn", class_names=[str(d) for d in range(10)], mean=MEAN, std=STD)
