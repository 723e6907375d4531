"""Spoken-word datasets as MFCC features: Free Spoken Digit Dataset and Google Speech Commands v0.02.

Features are standardised per coefficient with statistics of the *training* split, which are cached
beside the features so that the test split never sees its own statistics.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain
from pathlib import Path

import numpy as np

from nora.data.arrays import ArrayDataset
from nora.data.audio import (
    CLIP_SAMPLES,
    SAMPLE_RATE,
    clip_features,
    coefficient_stats,
    normalise,
    read_wav,
    resample,
    to_clip,
    wav_clips,
)
from nora.data.cache import cached_arrays
from nora.errors import NoraError

FSDD_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$")
FSDD_TEST_TAKES = 5  # official split: takes 0-4 of every speaker and digit are the test set

KWS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN, SILENCE = len(KWS_WORDS), len(KWS_WORDS) + 1
KWS_CLASSES = KWS_WORDS + ["unknown", "silence"]
NOISE_DIR = "_background_noise_"
SPLIT_LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
KWS_SPLITS = ("train", "val", "test")
KWS_SEED = 59185  # fixes which "unknown" clips are kept and where "silence" is cut, on every machine

Items = list[tuple[Path, int]]


def fsdd_dir(root: Path) -> Path:
    recordings = root / "recordings"
    return recordings if recordings.is_dir() else root


def fsdd_present(root: Path) -> bool:
    base = fsdd_dir(root)
    return base.is_dir() and any(FSDD_NAME.match(name) for name in os.listdir(base))


def load_fsdd(root: Path, split: str, cache_dir: str | os.PathLike | None) -> ArrayDataset:
    base = fsdd_dir(root)
    if not base.is_dir():
        raise NoraError(f"dataset 'fsdd': folder {base} not found")
    items: dict[str, Items] = {"train": [], "test": []}
    for name in sorted(os.listdir(base), key=_fsdd_order):
        match = FSDD_NAME.match(name)
        if match:
            part = "test" if int(match.group(3)) < FSDD_TEST_TAKES else "train"
            items[part].append((base / name, int(match.group(1))))
    if not items["train"] or not items["test"]:
        raise NoraError(f"dataset 'fsdd': no '<digit>_<speaker>_<take>.wav' files for both splits in {base}")
    sources = [path for part in items.values() for path, _ in part]
    builders = {part: partial(_wav_arrays, part_items) for part, part_items in items.items()}
    return _feature_dataset("fsdd", split, cache_dir, sources, builders, [str(d) for d in range(10)])


def speech_commands_present(root: Path) -> bool:
    return all((root / name).is_file() for name in SPLIT_LISTS.values())


def load_speech_commands(root: Path, split: str, cache_dir: str | os.PathLike | None) -> ArrayDataset:
    """12-class keyword spotting: ten words, "unknown" (all other words) and "silence" (background noise).

    As in the TensorFlow speech-commands recipe used by Hello Edge, "unknown" is subsampled and
    "silence" generated to the size of an average word class, so accuracy is not dominated by them;
    both choices are seeded per split and so fixed.
    """
    words, noise = _kws_files(root)
    items = _kws_items(root, words)
    sources = [path for part in items.values() for path, _ in part] + noise
    sources += [root / name for name in SPLIT_LISTS.values()]
    builders = {part: partial(_kws_arrays, items[part], noise, KWS_SPLITS.index(part)) for part in KWS_SPLITS}
    return _feature_dataset("speech-commands", split, cache_dir, sources, builders, KWS_CLASSES)


def _feature_dataset(
    name: str,
    split: str,
    cache_dir: str | os.PathLike | None,
    sources: list[Path],
    builders: dict[str, Callable[[], dict[str, np.ndarray]]],
    classes: list[str],
) -> ArrayDataset:
    raw = cached_arrays(cache_dir, name, split, sources, ("x", "y"), builders[split])

    def train_stats() -> dict[str, np.ndarray]:
        train = raw if split == "train" else cached_arrays(cache_dir, name, "train", sources, ("x", "y"), builders["train"])
        return coefficient_stats(train["x"])

    stats = cached_arrays(cache_dir, name, "train-stats", sources, ("mean", "std"), train_stats)
    x = normalise(raw["x"], stats["mean"], stats["std"])
    return ArrayDataset(x, raw["y"], name=name, class_names=classes, mean=stats["mean"], std=stats["std"])


def _wav_arrays(items: Items) -> dict[str, np.ndarray]:
    x = clip_features(wav_clips(path for path, _ in items), len(items))
    return {"x": x, "y": np.array([label for _, label in items], dtype=np.int64)}


def _fsdd_order(name: str) -> tuple:
    match = FSDD_NAME.match(name)
    return (int(match.group(1)), match.group(2), int(match.group(3))) if match else (99, name, 0)


def _kws_files(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Wav files per word folder, and the background-noise recordings."""
    if not root.is_dir():
        raise NoraError(f"dataset 'speech-commands': folder {root} not found")
    words = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            words[entry.name] = sorted(Path(entry.path) / n for n in os.listdir(entry.path) if n.endswith(".wav"))
    noise_dir = root / NOISE_DIR
    noise = sorted(noise_dir.glob("*.wav")) if noise_dir.is_dir() else []
    if not noise:
        raise NoraError(f"dataset 'speech-commands': no background noise wavs in {noise_dir} (needed for 'silence')")
    if not any(word in words for word in KWS_WORDS):
        raise NoraError(f"dataset 'speech-commands': none of the folders {', '.join(KWS_WORDS)} found in {root}")
    return words, noise


def _kws_items(root: Path, words: dict[str, list[Path]]) -> dict[str, Items]:
    listed = {}
    for part, name in SPLIT_LISTS.items():
        path = root / name
        if not path.is_file():
            raise NoraError(f"dataset 'speech-commands': split list {path} not found")
        listed[part] = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    items: dict[str, Items] = {part: [] for part in KWS_SPLITS}
    for word, paths in words.items():
        label = KWS_WORDS.index(word) if word in KWS_WORDS else UNKNOWN
        for path in paths:
            relative = f"{word}/{path.name}"
            part = "test" if relative in listed["test"] else "val" if relative in listed["val"] else "train"
            items[part].append((path, label))
    return items


def _kws_arrays(items: Items, noise: list[Path], split_index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([KWS_SEED, split_index])
    known = [item for item in items if item[1] != UNKNOWN]
    unknown = [item for item in items if item[1] == UNKNOWN]
    words_present = max(1, len({label for _, label in known}))
    per_class = max(1, round(len(known) / words_present))
    if len(unknown) > per_class:
        keep = np.sort(rng.choice(len(unknown), per_class, replace=False))
        unknown = [unknown[i] for i in keep]
    chosen = known + unknown
    clips = chain(wav_clips(path for path, _ in chosen), _silence_clips(noise, per_class, rng))
    x = clip_features(clips, len(chosen) + per_class)
    y = np.array([label for _, label in chosen] + [SILENCE] * per_class, dtype=np.int64)
    return {"x": x, "y": y}


def _silence_clips(noise_files: list[Path], count: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """1 s excerpts of the background recordings at random offsets and volumes."""
    noise = [resample(*read_wav(path)) for path in noise_files]
    for _ in range(count):
        recording = noise[int(rng.integers(len(noise)))]
        offset = int(rng.integers(0, max(1, recording.shape[0] - CLIP_SAMPLES + 1)))
        yield to_clip(recording[offset : offset + CLIP_SAMPLES], SAMPLE_RATE) * np.float32(rng.uniform(0.0, 1.0))
