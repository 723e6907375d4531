"""MNIST and Fashion-MNIST from the four standard idx files, gzip or not.

The headers are checked strictly (magic, dimensions, exact file length, matching counts) because a
truncated download otherwise turns into silently wrong training data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from nora.data.arrays import ArrayDataset
from nora.errors import NoraError

IMAGES_MAGIC = 0x803
LABELS_MAGIC = 0x801
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def find_file(root: Path, stem: str) -> Path | None:
    """The uncompressed file if present, else its ``.gz``."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def present(root: Path) -> bool:
    return all(find_file(root, stem) is not None for pair in FILES.values() for stem in pair)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in one idx file."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise NoraError(f"idx file {path} is corrupt or truncated: {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise NoraError(f"idx file {path} is corrupt or not an idx file: magic 0x{found:x}, expected 0x{magic:x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise NoraError(f"idx file {path} is corrupt or truncated: header cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise NoraError(f"idx file {path} is corrupt or truncated: {len(raw)} bytes, header {dims} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(root: Path, split: str, name: str) -> ArrayDataset:
    image_stem, label_stem = FILES[split]
    paths = []
    for stem in (image_stem, label_stem):
        path = find_file(root, stem)
        if path is None:
            raise NoraError(f"dataset '{name}': {stem}[.gz] not found in {root}")
        paths.append(path)
    images = read_idx(paths[0], IMAGES_MAGIC)
    labels = read_idx(paths[1], LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise NoraError(
            f"idx file {paths[1]} is corrupt or truncated: {labels.shape[0]} labels for {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) > 9:
        raise NoraError(f"idx file {paths[1]} is corrupt: label {int(labels.max())} outside 0-9")
    x = images.astype(np.float32)[:, None, :, :] / 255.0
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(d) for d in range(10)]
    return ArrayDataset(x, labels.astype(np.int64), name=name, class_names=classes)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise NoraError(f"idx file {path} is corrupt or truncated: {exc}") from None
    except OSError as exc:
        raise NoraError(f"cannot read {path}: {exc.strerror or exc}") from None
    return raw
