"""CIFAR-10 from the official pickled batches (directory or ``cifar-10-python.tar.gz``) or an image folder.

The official batches are pickles, and unpickling runs whatever callable the file names. They are read
with an unpickler that resolves only the few globals a numpy array needs, so a tampered file fails
with an error instead of executing code.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from functools import partial
from pathlib import Path

import numpy as np

from nora.data.arrays import ArrayDataset, normalised_images
from nora.data.cache import cached_arrays, store
from nora.data.imagefolder import (
    class_folders,
    decode_files,
    read_tar_splits,
    scan_class_folders,
)
from nora.errors import NoraError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
SIZE = 32
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
PICKLE_DIR = "cifar-10-batches-py"
PICKLE_ARCHIVE = "cifar-10-python.tar.gz"
JPG_ARCHIVE = "cifar10-jpg.tar.gz"


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as found
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as found
    return found


def _allowed() -> dict[tuple[str, str], object]:
    import _codecs

    reconstruct = _reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") under pickle protocols < 3.
        ("_codecs", "encode"): _codecs.encode,
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
        ("builtins", "bytearray"): bytearray,
        ("__builtin__", "bytearray"): bytearray,
    }


# What a malformed or truncated pickle raises, depending on where the damage lies.
_MALFORMED = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
    MemoryError, struct.error,
)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only numpy-array reconstruction and plain builtin containers."""

    def __init__(self, file, origin: str):
        super().__init__(file, encoding="bytes")
        self.origin = origin
        self.allowed = _allowed()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise NoraError(f"refusing to unpickle {module}.{name} from {self.origin}: not a plain CIFAR batch") from None


def unpickle(data: bytes, origin: str) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data), origin).load()
    except _MALFORMED as exc:
        raise NoraError(f"CIFAR batch {origin} is corrupt or truncated: {type(exc).__name__}: {exc}") from None


def parse_batch(batch: object, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[n, 3, 32, 32]`` images and labels from one unpickled batch dict."""
    if not isinstance(batch, dict):
        raise NoraError(f"CIFAR batch {origin} is not a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise NoraError(f"CIFAR batch {origin} lacks 'data' array or 'labels'")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
        raise NoraError(f"CIFAR batch {origin}: data is {data.dtype} {data.shape}, expected uint8 [n, 3072]")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise NoraError(f"CIFAR batch {origin}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise NoraError(f"CIFAR batch {origin}: labels outside 0-9")
    return data.reshape(-1, 3, SIZE, SIZE), labels.astype(np.int64)


def locate(root: Path) -> tuple[str, Path] | None:
    """The first CIFAR-10 source found in ``root``: (kind, path)."""
    for directory in (root, root / PICKLE_DIR):
        if (directory / "data_batch_1").is_file():
            return "pickles", directory
    if (root / PICKLE_ARCHIVE).is_file():
        return "pickle-archive", root / PICKLE_ARCHIVE
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "folder", root
    if (root / JPG_ARCHIVE).is_file():
        return "jpg-archive", root / JPG_ARCHIVE
    return None


def present(root: Path) -> bool:
    return locate(root) is not None


def load_cifar10(root: Path, split: str, cache_dir: str | os.PathLike | None) -> ArrayDataset:
    found = locate(root)
    if found is None:
        raise NoraError(
            f"dataset 'cifar10': none of {PICKLE_DIR}/, {PICKLE_ARCHIVE}, train/+test/ folders or {JPG_ARCHIVE} in {root}"
        )
    kind, path = found
    if kind == "pickles":
        names = BATCHES[split]
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise NoraError(f"dataset 'cifar10': {path / missing[0]} not found")
        sources = [path / n for n in names]
        build = partial(_from_batches, {n: path / n for n in names}, str(path))
    elif kind == "pickle-archive":
        sources = [path]
        build = partial(_from_archive, path, BATCHES[split])
    elif kind == "folder":
        if class_folders(path / split) != CLASSES:
            raise NoraError(f"dataset 'cifar10': class folders in {path / split} are not the 10 CIFAR-10 classes")
        items = scan_class_folders(path / split, CLASSES)
        sources = [p for p, _ in items]
        build = partial(decode_files, items, SIZE)
    else:
        sources = [path]
        build = partial(_from_jpg_archive, path, split, sources, cache_dir)
    arrays = cached_arrays(cache_dir, "cifar10", split, sources, ("x", "y"), build)
    x = normalised_images(arrays["x"], MEAN, STD)
    return ArrayDataset(x, arrays["y"], name="cifar10", class_names=CLASSES, mean=MEAN, std=STD)


def _from_jpg_archive(archive: Path, split: str, sources: list[Path], cache_dir) -> dict[str, np.ndarray]:
    """Decode both splits in one walk of the archive and cache the split not asked for as well."""
    decoded = read_tar_splits(archive, tuple(BATCHES), CLASSES, SIZE)
    for other, arrays in decoded.items():
        if other != split:
            store(cache_dir, "cifar10", other, sources, arrays)
    return decoded[split]


def _from_batches(batches: dict[str, Path | bytes], origin: str) -> dict[str, np.ndarray]:
    parts = []
    for name, data in batches.items():
        if isinstance(data, Path):
            data = data.read_bytes()
        parts.append(parse_batch(unpickle(data, f"{origin}/{name}"), f"{origin}/{name}"))
    return {"x": np.concatenate([p[0] for p in parts]), "y": np.concatenate([p[1] for p in parts])}


def _from_archive(archive: Path, names: list[str]) -> dict[str, np.ndarray]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise NoraError(f"archive {archive} is corrupt or truncated: {exc}") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise NoraError(f"archive {archive} lacks {missing[0]}")
    return _from_batches({n: found[n] for n in names}, str(archive))
