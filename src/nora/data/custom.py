"""A user's own data: arrays (``dataset: arrays``) and image folders (``dataset: folder``).

Arrays come from a ``.npz`` file (``x``/``y``, or ``x_train``/``y_train``/``x_test``/``y_test``) or a
folder of ``.npy`` files with those names; any sample shape, any labels (integers, strings or one-hot
rows). Image folders hold one subfolder per class (any names), either directly or under ``train/``
and ``test/``; image size and channel count are kept or set. Without a given test split, a seeded
stratified fraction of the samples is held out, the same on every call, so the train and test splits
never overlap. Inputs are normalised like the built-in sets: uint8 scaled to [0, 1], then per
channel (per feature for flat vectors) with the *training* split's mean and std.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nora.data.arrays import ArrayDataset
from nora.data.cache import cached_arrays
from nora.data.imagefolder import IMAGE_SUFFIXES, is_image
from nora.errors import NoraError

DEFAULT_TEST_FRACTION = 0.2
LAYOUTS = ("auto", "nchw", "nhwc", "keep")
NORMALIZE = ("channel", "global", "none")
CHANNELS = (1, 3, 4)
TEST_FOLDERS = ("test", "val", "valid", "validation")
ARRAY_OPTIONS = ("path", "test_path", "test_fraction", "split_seed", "layout", "normalize", "x_key", "y_key",
                 "class_names")
FOLDER_OPTIONS = ("path", "test_path", "test_fraction", "split_seed", "image_size", "channels", "normalize")

# What PIL calls the modes of single-channel images.
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;grey")


# ------------------------------------------------------------------------------ shared steps
def _source(name: str, path: Any, what: str = "path") -> Path:
    if path is None or str(path).strip() == "":
        raise NoraError(f"dataset '{name}' needs data.{what}: "
                        + ("a .npz file or a folder of .npy files" if name == "arrays" else "an image folder"))
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise NoraError(f"dataset '{name}': data.{what} {path} not found")
    return path


def _fraction(name: str, value: Any) -> float:
    if value is None:
        return DEFAULT_TEST_FRACTION
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise NoraError(f"dataset '{name}': test_fraction must be a number between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def _seed(name: str, value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise NoraError(f"dataset '{name}': split_seed must be an integer >= 0, got {value!r}")
    return value


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: ``fraction`` of every class held out, chosen by ``seed``, both sorted.

    Per class so that a small class is not left out of one split by chance; a class with a single
    sample stays in training.
    """
    from nora.seeds import SeedTree

    rng = SeedTree(seed).child("data-split").numpy()
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = min(len(members) - 1, max(1, int(round(fraction * len(members))))) if len(members) > 1 else 0
        test.append(rng.permutation(members)[:n_test])
    test_index = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_index] = False
    return np.flatnonzero(mask), test_index


def _normalize_mode(name: str, value: Any) -> str:
    mode = "channel" if value in (None, "auto", True) else ("none" if value is False else value)
    if mode not in NORMALIZE:
        raise NoraError(f"dataset '{name}': normalize must be one of auto, {', '.join(NORMALIZE)}; got {value!r}")
    return mode


def _to_float(name: str, x: np.ndarray, origin: str) -> torch.Tensor:
    """float32 inputs; uint8 (images) scaled to [0, 1]; NaN or infinity refused."""
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).mul_(1.0 / 255.0)
    if x.dtype.kind not in "biuf":
        raise NoraError(f"dataset '{name}': inputs in {origin} are {x.dtype}, not numbers")
    t = torch.from_numpy(np.ascontiguousarray(x).astype(np.float32, copy=False))
    if not bool(torch.isfinite(t).all()):
        raise NoraError(f"dataset '{name}': inputs in {origin} contain NaN or infinity")
    return t


def _stats(x: torch.Tensor, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std over the training inputs: per channel (axis 1) or one for all; a constant is left alone."""
    if mode == "none":
        return None
    if mode == "global":
        std, mean = torch.std_mean(x, correction=0)
        means, stds = [float(mean)], [float(std)]
    elif x.ndim == 2:  # flat feature vectors: per feature
        std, mean = torch.std_mean(x, dim=0, correction=0)
        means, stds = mean.tolist(), std.tolist()
    else:  # per channel, one channel at a time (a float64 copy of a large image set would not fit)
        means, stds = [], []
        for c in range(x.shape[1]):
            std, mean = torch.std_mean(x[:, c], correction=0)
            means.append(float(mean))
            stds.append(float(std))
    return tuple(means), tuple(s if s > 1e-12 else 1.0 for s in stds)


def _apply_stats(x: torch.Tensor, stats) -> torch.Tensor:
    if stats is None:
        return x
    mean, std = stats
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    return x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape)).div_(torch.tensor(std, dtype=x.dtype).view(shape))


def _check_same_shape(name: str, train_shape: tuple, test_shape: tuple, train_origin: str, test_origin: str) -> None:
    if tuple(train_shape) != tuple(test_shape):
        raise NoraError(f"dataset '{name}': test samples have shape {tuple(test_shape)} ({test_origin}) but "
                        f"training samples {tuple(train_shape)} ({train_origin})")


def _finish(name: str, split: str, parts: dict[str, tuple[torch.Tensor, np.ndarray]], class_names: list[str],
            normalize: str, source: Path) -> ArrayDataset:
    stats = _stats(parts["train"][0], normalize)
    x, y = parts[split]
    x = _apply_stats(x, stats)
    mean, std = (None, None) if stats is None else stats
    return ArrayDataset(x, y, name=name, class_names=class_names, mean=mean, std=std,
                        source=str(source.resolve()), split=split)


# ------------------------------------------------------------------------------ arrays
def _read_arrays(path: Path, x_key: str, y_key: str) -> dict[str, np.ndarray]:
    """The arrays a .npz file or a folder of .npy files holds, by name (no pickles)."""
    wanted = {x_key, y_key, f"{x_key}_train", f"{y_key}_train", f"{x_key}_test", f"{y_key}_test"}
    try:
        if path.is_dir():
            found = {p.stem: p for p in path.glob("*.npy") if p.stem in wanted}
            if not found:
                raise NoraError(f"dataset 'arrays': folder {path} holds none of {x_key}.npy/{y_key}.npy "
                                f"({x_key}_train.npy, ... for given splits)")
            return {key: np.load(p, allow_pickle=False) for key, p in found.items()}
        if path.suffix == ".npy":
            raise NoraError(f"dataset 'arrays': {path} is one array; give the folder holding {x_key}.npy and "
                            f"{y_key}.npy, or a .npz file with both")
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise NoraError(f"dataset 'arrays': {path} is not a .npz archive")
            return {key: npz[key] for key in npz.files if key in wanted}
    except NoraError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise NoraError(f"dataset 'arrays': {path} is not a .npz/.npy file of plain arrays (pickled Python "
                            "objects are not read; save numbers or fixed-width strings)") from None
        raise NoraError(f"dataset 'arrays': cannot read {path}: {exc}") from None
    except (OSError, EOFError) as exc:
        raise NoraError(f"dataset 'arrays': cannot read {path} (corrupt or truncated?): {exc}") from None
    except Exception as exc:  # zipfile.BadZipFile and other format errors
        raise NoraError(f"dataset 'arrays': {path} is not a readable .npz/.npy file ({type(exc).__name__})") from None


def _pair(arrays: dict[str, np.ndarray], x_key: str, y_key: str, suffix: str, origin: Path) -> tuple[np.ndarray, np.ndarray]:
    xk, yk = x_key + suffix, y_key + suffix
    if xk not in arrays or yk not in arrays:
        missing = xk if xk not in arrays else yk
        raise NoraError(f"dataset 'arrays': {origin} has no array {missing!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    x, y = arrays[xk], arrays[yk]
    if x.ndim < 2:
        raise NoraError(f"dataset 'arrays': {xk} in {origin} has shape {x.shape}; expected [samples, ...]")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise NoraError(f"dataset 'arrays': {origin} has {len(x)} inputs {xk} {x.shape} but labels {yk} of shape {y.shape}")
    if len(x) == 0:
        raise NoraError(f"dataset 'arrays': {origin} holds no samples")
    return x, y


def _layout(x: np.ndarray, layout: str, origin: str) -> np.ndarray:
    """Samples as [N, C, ...]: grey images [N, H, W] get a channel axis; channels-last images are moved."""
    if layout == "keep" or x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        channels_last = {"nhwc": True, "nchw": False}.get(layout, x.shape[3] in CHANNELS and x.shape[1] not in CHANNELS)
        return x.transpose(0, 3, 1, 2) if channels_last else x
    if layout in ("nhwc", "nchw"):
        raise NoraError(f"dataset 'arrays': layout {layout} needs images [N, H, W, C]/[N, C, H, W], {origin} has {x.shape}")
    return x


def encode_labels(parts: Sequence[np.ndarray], class_names: Sequence[Any] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Labels of every split as 0..K-1 with one mapping, and the K class names.

    Integers that already run 0..K-1 are kept; other labels (gaps, negative numbers, strings) are
    numbered in sorted order and keep their value as the class name. One-hot rows become their index.
    ``class_names`` fixes K and the order (labels are then indices into it, or names from it).
    """
    decoded = []
    for y in parts:
        if y.ndim == 2:
            if not (np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
                raise NoraError("dataset 'arrays': 2-D labels must be one-hot rows (a single 1 per row)")
            if parts[0].ndim == 2 and y.shape[1] != parts[0].shape[1]:
                raise NoraError(f"dataset 'arrays': one-hot labels have {parts[0].shape[1]} and {y.shape[1]} columns")
            decoded.append(y.argmax(axis=1).astype(np.int64))
        elif y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise NoraError("dataset 'arrays': labels are fractional numbers; classification needs class labels")
            decoded.append(y.astype(np.int64))
        elif y.dtype.kind in "biuUS":
            decoded.append(y.astype(np.int64) if y.dtype.kind == "b" else y)
        else:
            raise NoraError(f"dataset 'arrays': labels of type {y.dtype} are not class labels")
    kinds = {"text" if y.dtype.kind in "US" else "number" for y in decoded}
    if len(kinds) > 1:
        raise NoraError("dataset 'arrays': the splits mix text and numeric labels")
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names) or not names:
            raise NoraError("dataset 'arrays': class_names must be a non-empty list of distinct names")
        if kinds == {"text"}:
            index = {n: i for i, n in enumerate(names)}
            unknown = sorted({str(v) for y in decoded for v in np.unique(y)} - set(index))
            if unknown:
                raise NoraError(f"dataset 'arrays': label {unknown[0]!r} is not among class_names")
            return [np.array([index[str(v)] for v in y], dtype=np.int64) for y in decoded], names
        for y in decoded:
            if y.size and (y.min() < 0 or y.max() >= len(names)):
                raise NoraError(f"dataset 'arrays': labels run {int(y.min())}..{int(y.max())}, but class_names "
                                f"names {len(names)} classes (0..{len(names) - 1})")
        return [y.astype(np.int64) for y in decoded], names
    values = np.unique(np.concatenate([np.unique(y) for y in decoded]))
    if len(values) < 2:
        raise NoraError(f"dataset 'arrays': all samples have the same label {values[0].item()!r}; "
                        "classification needs >= 2 classes")
    if kinds == {"number"} and values[0] == 0 and values[-1] == len(values) - 1:
        return [y.astype(np.int64) for y in decoded], [str(v) for v in range(len(values))]
    return [np.searchsorted(values, y).astype(np.int64) for y in decoded], [str(v) for v in values]


def load_arrays(root: Path | None, split: str, cache_dir: Any = None, **options: Any) -> ArrayDataset:
    """``dataset: arrays``: see the module docstring; ``options`` are the ``ARRAY_OPTIONS``."""
    name = "arrays"
    path = _source(name, options.get("path") or root)
    x_key, y_key = options.get("x_key") or "x", options.get("y_key") or "y"
    layout = options.get("layout") or "auto"
    if layout not in LAYOUTS:
        raise NoraError(f"dataset 'arrays': layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    normalize = _normalize_mode(name, options.get("normalize"))
    arrays = _read_arrays(path, x_key, y_key)
    test_path = options.get("test_path")
    given = f"{x_key}_train" in arrays or f"{x_key}_test" in arrays
    if test_path is not None or given:
        if options.get("test_fraction") is not None:
            where = f"test_path {test_path}" if test_path is not None else f"{path} (its _train/_test arrays)"
            raise NoraError(f"dataset 'arrays': the test split is given by {where}; drop test_fraction")
        if test_path is not None:
            test_source = _source(name, test_path, "test_path")
            raw = {"train": _pair(arrays, x_key, y_key, "", path),
                   "test": _pair(_read_arrays(test_source, x_key, y_key), x_key, y_key, "", test_source)}
            origins = {"train": str(path), "test": str(test_source)}
        else:
            raw = {s: _pair(arrays, x_key, y_key, f"_{s}", path) for s in ("train", "test")}
            origins = {s: f"{path}:{x_key}_{s}" for s in ("train", "test")}
        labels, classes = encode_labels([raw["train"][1], raw["test"][1]], options.get("class_names"))
        xs = {s: _layout(raw[s][0], layout, origins[s]) for s in ("train", "test")}
        _check_same_shape(name, xs["train"].shape[1:], xs["test"].shape[1:], origins["train"], origins["test"])
        parts = {s: (_to_float(name, xs[s], origins[s]), labels[i]) for i, s in enumerate(("train", "test"))
                 if s in ("train", split)}
    else:
        x, y = _pair(arrays, x_key, y_key, "", path)
        (labels,), classes = encode_labels([y], options.get("class_names"))
        x = _to_float(name, _layout(x, layout, str(path)), str(path))
        train_index, test_index = split_indices(labels, _fraction(name, options.get("test_fraction")),
                                                _seed(name, options.get("split_seed")))
        if len(test_index) == 0:
            raise NoraError(f"dataset 'arrays': {path} has too few samples per class to hold out a test split")
        parts = {"train": (x[train_index], labels[train_index]), "test": (x[test_index], labels[test_index])}
    return _finish(name, split, parts, classes, normalize, path)


# ------------------------------------------------------------------------------ image folders
def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    items = []
    for label, cls in enumerate(classes):
        class_dir = folder / cls
        if not class_dir.is_dir():
            continue
        files = [Path(d) / n for d, _, names in os.walk(class_dir) for n in names if is_image(n)]
        items.extend((p, label) for p in sorted(files))
    return items


def _image_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise NoraError(f"dataset 'folder': image_size must be a positive integer or [height, width], got {value!r}")


def _channels(value: Any) -> int | None:
    if value is None or (value in CHANNELS and not isinstance(value, bool)):
        return value
    raise NoraError(f"dataset 'folder': channels must be one of {', '.join(map(str, CHANNELS))}, got {value!r}")


def decode_folder(items: list[tuple[Path, int]], size: tuple[int, int] | None, channels: int | None) -> dict[str, np.ndarray]:
    """uint8 ``x`` [N, C, H, W] and ``y``; with ``size``/``channels`` None, every image must agree on them."""
    from PIL import Image, UnidentifiedImageError

    images, grey, first = [], [], None
    for path, _ in items:
        try:
            with Image.open(path) as image:
                is_grey = image.mode in _GREY_MODES or (image.mode == "P" and _palette_is_grey(image))
                mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels] if channels else ("L" if is_grey else "RGB")
                image = image.convert(mode)
                if size is not None and image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(image, dtype=np.uint8)
        except UnidentifiedImageError:
            raise NoraError(f"cannot decode image {path}: not a recognised image format") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise NoraError(f"cannot decode image {path}: {exc}") from None
        if first is None:
            first = (path, array.shape[:2])
        elif array.shape[:2] != first[1]:
            raise NoraError(f"dataset 'folder': images differ in size ({first[1][0]}x{first[1][1]} in {first[0]}, "
                            f"{array.shape[0]}x{array.shape[1]} in {path}); set data.image_size to resize them")
        images.append(array if array.ndim == 3 else array[:, :, None])
        grey.append(array.ndim == 2)
    if channels is None and not all(grey):
        images = [np.repeat(a, 3, axis=2) if g else a for a, g in zip(images, grey)]
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return {"x": x, "y": np.array([label for _, label in items], dtype=np.int64)}


def _palette_is_grey(image) -> bool:
    palette = image.getpalette() or []
    rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def _decoded(cache_dir: Any, root: Path, part: str, items, size, channels) -> dict[str, np.ndarray]:
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    shape = "native" if size is None else f"{size[0]}x{size[1]}"
    return cached_arrays(cache_dir, f"folder-{key}", f"{part}-{shape}-c{channels or 'auto'}", [p for p, _ in items],
                         ("x", "y"), partial(decode_folder, items, size, channels))


def load_folder(root: Path | None, split: str, cache_dir: Any = None, **options: Any) -> ArrayDataset:
    """``dataset: folder``: ``<path>/<class>/*`` (split by fraction), ``<path>/train|test/<class>/*``, or ``test_path``."""
    name = "folder"
    path = _source(name, options.get("path") or root)
    if not path.is_dir():
        raise NoraError(f"dataset 'folder': {path} is not a folder (expected one subfolder per class)")
    size, channels = _image_size(options.get("image_size")), _channels(options.get("channels"))
    normalize = _normalize_mode(name, options.get("normalize"))
    test_dir = next((path / t for t in TEST_FOLDERS if (path / t).is_dir()), None)
    test_path = options.get("test_path")
    if test_path is not None:
        train_dir, test_dir = path, _source(name, test_path, "test_path")
    elif (path / "train").is_dir() and test_dir is not None:
        train_dir = path / "train"
    else:
        train_dir, test_dir = path, None
    classes = _class_dirs(train_dir)
    if len(classes) < 2:
        raise NoraError(f"dataset 'folder': {train_dir} needs one subfolder per class (at least 2), "
                        f"found {len(classes)}")
    train_items = _scan(train_dir, classes)
    if not train_items:
        raise NoraError(f"dataset 'folder': no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}) "
                        f"in the class folders of {train_dir}")
    if test_dir is not None:
        if options.get("test_fraction") is not None:
            raise NoraError(f"dataset 'folder': the test split is given by {test_dir}; drop test_fraction")
        extra = sorted(set(_class_dirs(test_dir)) - set(classes))
        if extra:
            raise NoraError(f"dataset 'folder': test class folder {extra[0]!r} in {test_dir} has no training "
                            f"folder in {train_dir}")
        test_items = _scan(test_dir, classes)
        if not test_items:
            raise NoraError(f"dataset 'folder': no images in the class folders of {test_dir}")
        raw = {"train": _decoded(cache_dir, path, "train", train_items, size, channels),
               "test": _decoded(cache_dir, path, "test", test_items, size, channels)}
        _check_same_shape(name, raw["train"]["x"].shape[1:], raw["test"]["x"].shape[1:], str(train_dir), str(test_dir))
        parts = {s: (_to_float(name, raw[s]["x"], s), raw[s]["y"]) for s in {"train", split}}  # train: for the stats
    else:
        arrays = _decoded(cache_dir, path, "all", train_items, size, channels)
        train_index, test_index = split_indices(arrays["y"], _fraction(name, options.get("test_fraction")),
                                                _seed(name, options.get("split_seed")))
        if len(test_index) == 0:
            raise NoraError(f"dataset 'folder': {path} has too few images per class to hold out a test split")
        chosen = train_index if split == "train" else test_index
        other = train_index if split == "test" else None
        parts = {split: (_to_float(name, arrays["x"][chosen], split), arrays["y"][chosen])}
        if other is not None:
            parts["train"] = (_to_float(name, arrays["x"][other], "train"), arrays["y"][other])
    return _finish(name, split, parts, classes, normalize, path)
