"""Image-folder datasets (``<split>/<class>/<image>``), extracted or inside a tar archive, and Tiny ImageNet.

Decoding is the slow part (about 11 s for CIFAR-10's 60,000 JPEGs), so callers cache the uint8
arrays these functions return and decode only when the sources change.
"""

from __future__ import annotations

import io
import os
import tarfile
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from nora.data.arrays import ArrayDataset, normalised_images
from nora.data.cache import cached_arrays
from nora.errors import NoraError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm")

# Tiny ImageNet training-set channel statistics as commonly quoted in the literature.
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)
TINY_SIZE = 64


def is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, size: int, origin: str) -> np.ndarray:
    """RGB uint8 ``[size, size, 3]``; greyscale or odd-sized images are converted, not rejected."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError:
        raise NoraError(f"cannot decode image {origin}: not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise NoraError(f"cannot decode image {origin}: {exc}") from None


def decode_files(items: list[tuple[Path, int]], size: int) -> dict[str, np.ndarray]:
    """``x``: images as uint8 ``[N, 3, size, size]``; ``y``: their labels."""
    images = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NoraError(f"cannot read image {path}: {exc.strerror or exc}") from None
        images[i] = decode_image(data, size, str(path))
    labels = np.array([label for _, label in items], dtype=np.int64)
    return {"x": np.ascontiguousarray(images.transpose(0, 3, 1, 2)), "y": labels}


def scan_class_folders(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image, label) for every image below ``split_dir/<class>/``, in a stable order."""
    items = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise NoraError(f"class folder {class_dir} not found")
        files = []
        for folder, _, names in os.walk(class_dir):
            files.extend(Path(folder) / n for n in names if is_image(n))
        items.extend((path, label) for path in sorted(files))
    return items


def class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise NoraError(f"image folder {split_dir} not found")
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def read_tar_splits(archive: Path, splits: tuple[str, ...], classes: list[str], size: int) -> dict[str, dict[str, np.ndarray]]:
    """Decode ``[prefix/]<split>/<class>/<image>`` members straight from the archive, all splits in one pass.

    Walking a 60,000-member tar.gz costs seconds by itself, so every split is decoded on the same walk.
    """
    index = {name: label for label, name in enumerate(classes)}
    found: dict[str, list[tuple[int, str, np.ndarray]]] = {split: [] for split in splits}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 3 or parts[-3] not in found or not is_image(parts[-1]):
                    continue
                if parts[-2] not in index:
                    raise NoraError(f"{archive}: unexpected class folder '{parts[-2]}' in {member.name}")
                data = tar.extractfile(member).read()
                image = decode_image(data, size, f"{archive}:{member.name}")
                found[parts[-3]].append((index[parts[-2]], member.name, image))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise NoraError(f"archive {archive} is corrupt or truncated: {exc}") from None
    result = {}
    for split, items in found.items():
        if not items:
            raise NoraError(f"archive {archive} holds no images under '{split}/<class>/'")
        items.sort(key=lambda item: (item[0], item[1]))
        images = np.stack([image for _, _, image in items]).transpose(0, 3, 1, 2)
        result[split] = {"x": np.ascontiguousarray(images), "y": np.array([label for label, _, _ in items], dtype=np.int64)}
    return result


def tiny_imagenet_dir(root: Path) -> Path | None:
    for candidate in (root, root / "tiny-imagenet-200"):
        if (candidate / "train").is_dir():
            return candidate
    return None


def tiny_imagenet_present(root: Path) -> bool:
    return tiny_imagenet_dir(root) is not None


def load_tiny_imagenet(root: Path, split: str, cache_dir: str | os.PathLike | None) -> ArrayDataset:
    """Tiny ImageNet-200; the labelled ``val`` set serves as ``test`` (the official test set has no labels)."""
    base = tiny_imagenet_dir(root)
    if base is None:
        raise NoraError(f"dataset 'tiny-imagenet': no train/ folder in {root} or {root / 'tiny-imagenet-200'}")
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        classes = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    else:
        classes = class_folders(base / "train")
    items = scan_class_folders(base / "train", classes) if split == "train" else _tiny_val_items(base, classes)
    if not items:
        raise NoraError(f"dataset 'tiny-imagenet': no images for split '{split}' in {base}")
    sources = [path for path, _ in items] + [p for p in (wnids_file, base / "val" / "val_annotations.txt") if p.is_file()]
    arrays = cached_arrays(cache_dir, "tiny-imagenet", split, sources, ("x", "y"), partial(decode_files, items, TINY_SIZE))
    x = normalised_images(arrays["x"], TINY_MEAN, TINY_STD)
    return ArrayDataset(x, arrays["y"], name="tiny-imagenet", class_names=classes, mean=TINY_MEAN, std=TINY_STD)


def _tiny_val_items(base: Path, classes: list[str]) -> list[tuple[Path, int]]:
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise NoraError(f"dataset 'tiny-imagenet': {annotations} not found")
    index = {name: label for label, name in enumerate(classes)}
    items = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise NoraError(f"{annotations}:{number}: expected '<file>\\t<wnid>' with a known wnid, got {line[:80]!r}")
        path = base / "val" / "images" / fields[0]
        if not path.is_file():
            raise NoraError(f"{annotations}:{number}: image {path} not found")
        items.append((path, index[fields[1]]))
    return sorted(items)
