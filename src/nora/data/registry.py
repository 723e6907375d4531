"""The dataset table and ``load_dataset``: one place that maps a name to its files and loader.

Data locations resolve as ``root`` argument, else ``$NORA_DATA_<NAME>``, else ``$NORA_DATA/<name>``,
else ``~/.cache/nora/data/<name>`` (where ``download=True`` puts it when nothing else is set).
A user's own data (``arrays``, ``folder``) is read from ``path=`` (or ``root``) with the options its
loader lists (``nora.data.custom``); options left at ``None`` are ignored, so a config can pass every
data key to every data set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nora.data import cifar, custom, idx, imagefolder, speech, svhn
from nora.data.arrays import ArrayDataset
from nora.data.digits import load_digits_split
from nora.data.download import DEFAULT_TIMEOUT, fetch
from nora.errors import NoraError

DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int | None  # None: known only once the data is read (a user's own data)
    input_shape: tuple[int, ...] | None
    description: str
    load: Callable[..., ArrayDataset]  # (root, split, cache_dir, **options) -> ArrayDataset
    present: Callable[[Path], bool] | None = None  # None: embedded, needs no files
    splits: tuple[str, ...] = ("train", "test")
    options: tuple[str, ...] = ()  # keyword options the loader takes (a user's own data)

    @property
    def needs_files(self) -> bool:
        return self.present is not None


def _digits(root, split, cache_dir):
    return load_digits_split(split)


def _idx(name, root, split, cache_dir):
    return idx.load_idx_split(root, split, name)


def _svhn(root, split, cache_dir):
    return svhn.load_svhn(root, split)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", 10, (1, 8, 8), "scikit-learn 8x8 handwritten digits, embedded (1,347 train / 450 test)", _digits),
        DatasetSpec("mnist", 10, (1, 28, 28), "MNIST handwritten digits, idx files (60,000 / 10,000)", partial(_idx, "mnist"), idx.present),
        DatasetSpec(
            "fashion-mnist", 10, (1, 28, 28), "Fashion-MNIST clothing images, idx files (60,000 / 10,000)",
            partial(_idx, "fashion-mnist"), idx.present,
        ),
        DatasetSpec(
            "cifar10", 10, (3, 32, 32), "CIFAR-10 colour images, python batches or image folder (50,000 / 10,000)",
            cifar.load_cifar10, cifar.present,
        ),
        DatasetSpec("svhn", 10, (3, 32, 32), "SVHN house-number digits, .mat files (73,257 / 26,032)", _svhn, svhn.present),
        DatasetSpec(
            "tiny-imagenet", 200, (3, 64, 64), "Tiny ImageNet-200, image folder; 'test' is the labelled val set (100,000 / 10,000)",
            imagefolder.load_tiny_imagenet, imagefolder.tiny_imagenet_present,
        ),
        DatasetSpec(
            "fsdd", 10, (1, 10, 49), "Free Spoken Digit Dataset as 10x49 MFCCs (2,700 / 300)", speech.load_fsdd, speech.fsdd_present,
        ),
        DatasetSpec(
            "speech-commands", 12, (1, 10, 49), "Google Speech Commands v0.02, 12-class keyword spotting as 10x49 MFCCs",
            speech.load_speech_commands, speech.speech_commands_present, ("train", "val", "test"),
        ),
        DatasetSpec(
            "arrays", None, None, "your own arrays: a .npz file (x, y) or a folder of x.npy/y.npy; any shape and labels",
            custom.load_arrays, Path.exists, options=custom.ARRAY_OPTIONS,
        ),
        DatasetSpec(
            "folder", None, None, "your own images: one subfolder per class (optionally under train/ and test/)",
            custom.load_folder, Path.is_dir, options=custom.FOLDER_OPTIONS,
        ),
    )
}


#: Every loader option any data set takes: the ``data:`` config keys to pass to ``load_dataset``.
DATA_OPTIONS: tuple[str, ...] = tuple(sorted({key for spec in DATASETS.values() for key in spec.options}))


def get_spec(name: str) -> DatasetSpec:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise NoraError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[key]


def dataset_info(name: str) -> dict:
    spec = get_spec(name)
    return {
        "name": spec.name,
        "num_classes": spec.num_classes,
        "input_shape": spec.input_shape,
        "description": spec.description,
        "splits": list(spec.splits),
        "needs_files": spec.needs_files,
        "options": list(spec.options),
    }


def resolve_root(name: str, root: str | os.PathLike | None = None) -> Path:
    """Where dataset ``name`` lives (or would be downloaded to)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("NORA_DATA_" + name.upper().replace("-", "_"))
    if env:
        return Path(env).expanduser()
    base = os.environ.get("NORA_DATA")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "nora" / "data") / name


def load_dataset(
    name: str = DEFAULT_DATASET,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    **options: Any,
) -> ArrayDataset:
    """Load one split of a dataset as whole tensors; ``root`` is ignored for embedded datasets.

    ``options`` are the loader's own keys (``path``, ``test_path``, ``image_size``, ...); one set for
    a data set that does not take it is refused, one left at ``None`` is ignored.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise NoraError(f"dataset '{spec.name}' has no split {split!r}; choose from {', '.join(spec.splits)}")
    given = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = f"it takes {', '.join(spec.options)}" if spec.options else "it takes none (they are for 'arrays' and 'folder')"
        raise NoraError(f"dataset '{spec.name}' has no option {unknown[0]!r}; {takes}")
    if spec.options:
        if download:
            raise NoraError(f"dataset '{spec.name}' is your own data; there is nothing to download")
        dataset = spec.load(None if root is None else Path(root).expanduser(), split, cache_dir, **given)
    elif not spec.needs_files:
        dataset = spec.load(None, split, cache_dir)
    else:
        path = resolve_root(spec.name, root)
        if download and not spec.present(path):
            fetch(spec.name, path, timeout=timeout)
        elif not path.exists():
            raise NoraError(
                f"dataset '{spec.name}' not found at {path}: pass --data-root / root=, set NORA_DATA, or use --download"
            )
        dataset = spec.load(path, split, cache_dir)
        dataset.source = str(path.resolve())
    dataset.split = split
    return dataset
