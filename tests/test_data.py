"""Tests for nora.data: loaders, batch loader, file formats, caching, downloads and bad input."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from nora.data import (
    DATASETS,
    ArrayDataset,
    cifar,
    dataset_info,
    download,
    load_dataset,
    make_loader,
)
from nora.data.audio import N_FRAMES, N_MFCC, read_wav
from nora.data.cache import cached_arrays, entry_path
from nora.errors import NoraError

torch.set_num_threads(1)

SHARED = Path(os.environ.get("NORA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared real data {path} not present")
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test may read the developer's own data or cache folders."""
    for key in list(os.environ):
        if key.startswith("NORA_DATA"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NORA_CACHE", str(tmp_path / "default-cache"))


# ---------------------------------------------------------------------------------------------
# helpers that write tiny files in the official formats


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801)
        arrays[prefix] = images
    return arrays


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone(freq: float, seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def write_cifar_batches(folder: Path, sizes=(2, 2, 2, 2, 2), n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    train_x, train_y = [], []
    for i, n in enumerate(sizes, 1):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batch = {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
        raw = py2_style_batch(data, labels) if i == 5 else pickle.dumps(batch, protocol=2)
        (folder / f"data_batch_{i}").write_bytes(raw)
        train_x.append(data)
        train_y += labels
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": test_labels, b"data": test}, protocol=2))
    meta = {b"label_names": [c.encode() for c in cifar.CLASSES], b"num_cases_per_batch": 10000}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {"train_x": np.concatenate(train_x), "train_y": np.array(train_y), "test_x": test, "test_y": np.array(test_labels)}


def py2_style_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official (Python 2) files are: str as SHORT_BINSTRING/BINSTRING, numpy.core paths."""
    def short(s: bytes) -> bytes:
        return b"U" + bytes([len(s)]) + s

    out = b"\x80\x02}(" + short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R("
    out += b"K\x01M" + struct.pack("<H", data.shape[0]) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R(K\x03" + short(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb"
    out += short(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def denormalise(ds: ArrayDataset) -> np.ndarray:
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    return torch.round((ds.x * std + mean) * 255).to(torch.int64).numpy()


def save_image(path: Path, colour, size: int = 64, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), colour).save(path)


# ---------------------------------------------------------------------------------------------
# digits (embedded default)


def test_digits_shapes_range_and_split():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    assert train.x.shape == (1347, 1, 8, 8) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64 and train.input_shape == (1, 8, 8)
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert train.num_classes == 10 and test.num_classes == 10
    # stratified: every class holds 43-46 of the 450 test samples
    counts = torch.bincount(test.y, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 46
    again = load_dataset("digits", "train")
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    assert load_dataset().name == "digits"  # the default dataset


def test_registry_info_and_subset():
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "svhn", "tiny-imagenet", "fsdd", "speech-commands"} <= set(DATASETS)
    info = dataset_info("cifar10")
    assert info["num_classes"] == 10 and info["input_shape"] == (3, 32, 32) and info["description"]
    assert dataset_info("speech-commands")["num_classes"] == 12
    assert dataset_info("FSDD")["input_shape"] == (1, 10, 49)
    ds = load_dataset("digits", "test")
    small = ds.subset(10)
    assert len(small) == 10 and torch.equal(small.x, ds.x[torch.arange(10) * len(ds) // 10])
    ordered = ds.subset(torch.argsort(ds.y))  # sorted by class, like an image folder
    assert set(ordered.subset(20).y.tolist()) == set(range(10))
    picked = ds.subset([3, 1])
    assert torch.equal(picked.y, ds.y[[3, 1]]) and picked.class_names == ds.class_names
    assert len(ds.subset(10_000)) == len(ds)
    assert torch.equal(ds.subset(ds.y == 3).y, ds.y[ds.y == 3])
    with pytest.raises(NoraError, match="out of range"):
        ds.subset([0, 450])


# ---------------------------------------------------------------------------------------------
# batch loader


def counting_dataset(n: int = 103) -> ArrayDataset:
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    return ArrayDataset(x, torch.arange(n) % 3, name="count", class_names=["a", "b", "c"])


def epoch_order(loader) -> list[int]:
    return [int(v) for xb, _ in loader for v in xb.view(-1)]


def test_loader_covers_every_sample_once_and_reshuffles():
    ds = counting_dataset()
    loader = make_loader(ds, batch_size=10, shuffle=True, seed=3)
    assert len(loader) == 11
    first = epoch_order(loader)
    second = epoch_order(loader)
    assert sorted(first) == list(range(103)) and sorted(second) == list(range(103))
    assert first != second and first != list(range(103))
    for xb, yb in make_loader(ds, batch_size=10, seed=3):
        assert torch.equal(yb, xb.view(-1).long() % 3)  # labels stay paired with inputs
    replay = make_loader(ds, batch_size=10, shuffle=True, seed=3)
    assert epoch_order(replay) == first and epoch_order(replay) == second
    replay.set_epoch(0)
    assert epoch_order(replay) == first
    assert epoch_order(make_loader(ds, batch_size=10, seed=4)) != first
    assert epoch_order(make_loader(ds, batch_size=10, shuffle=False)) == list(range(103))


def test_loader_drop_last_and_bad_arguments():
    ds = counting_dataset()
    loader = make_loader(ds, batch_size=10, drop_last=True, seed=0)
    sizes = [xb.shape[0] for xb, _ in loader]
    assert len(loader) == 10 and sizes == [10] * 10
    assert [xb.shape[0] for xb, _ in make_loader(ds, batch_size=10)][-1] == 3
    with pytest.raises(NoraError, match="batch_size"):
        make_loader(ds, batch_size=0)
    with pytest.raises(NoraError, match="augment"):
        make_loader(ds, augment="cifar")  # not images
    with pytest.raises(NoraError, match="unknown augmentation"):
        make_loader(load_dataset("digits"), augment="mixup")


def test_cifar_augment_shape_determinism_and_effect():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g)
    ds = ArrayDataset(x, torch.zeros(64, dtype=torch.int64), name="img", class_names=["a"], mean=(0.5,) * 3, std=(0.25,) * 3)
    a = [xb for xb, _ in make_loader(ds, batch_size=16, shuffle=False, augment="cifar", seed=7)]
    b = [xb for xb, _ in make_loader(ds, batch_size=16, shuffle=False, augment="cifar", seed=7)]
    c = [xb for xb, _ in make_loader(ds, batch_size=16, shuffle=False, augment="cifar", seed=8)]
    assert all(xb.shape == (16, 3, 32, 32) for xb in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    augmented = torch.cat(a)
    changed = [not torch.equal(augmented[i], x[i]) for i in range(64)]
    assert sum(changed) > 48  # only offset (4, 4) without a flip leaves an image unchanged
    # padding is black in normalised units: (0 - 0.5) / 0.25 = -2
    assert bool((augmented == -2.0).any())
    # every output row is a (possibly flipped) window of the padded input
    padded = torch.full((3, 40, 40), -2.0)
    padded[:, 4:36, 4:36] = x[0]
    windows = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    assert any(torch.equal(augmented[0], w) or torch.equal(augmented[0], w.flip(2)) for w in windows)


# ---------------------------------------------------------------------------------------------
# real data from the shared folder


def test_mnist_real():
    root = shared("mnist")
    train = load_dataset("mnist", "train", root=root)
    test = load_dataset("mnist", "test", root=root)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0


def test_fashion_mnist_real(monkeypatch):
    root = shared("fashion-mnist")
    monkeypatch.setenv("NORA_DATA", str(root.parent))  # found as $NORA_DATA/fashion-mnist
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert train.class_names[0] == "T-shirt/top"


def test_fsdd_real(tmp_path):
    root = shared("fsdd")
    train = load_dataset("fsdd", "train", root=root, cache_dir=tmp_path)
    test = load_dataset("fsdd", "test", root=root, cache_dir=tmp_path)
    assert (len(train), len(test)) == (2700, 300)
    assert train.input_shape == (1, 10, 49) and test.input_shape == (1, 10, 49)
    assert bool(torch.isfinite(train.x).all()) and bool(torch.isfinite(test.x).all())
    assert torch.bincount(test.y).tolist() == [30] * 10
    # standardised with the training statistics, which the test split reuses
    assert train.mean == test.mean and abs(float(train.x.mean())) < 1e-3
    assert abs(float(train.x.std()) - 1.0) < 1e-2


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cifar-cache")


def test_cifar10_real_jpg_archive(cifar_cache, monkeypatch):
    root = shared("cifar10")
    train = load_dataset("cifar10", "train", root=root, cache_dir=cifar_cache)
    test = load_dataset("cifar10", "test", root=root, cache_dir=cifar_cache)
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.y).tolist() == [5000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert train.class_names[:2] == ["airplane", "automobile"]
    channel_mean = train.x.mean(dim=(0, 2, 3))
    assert bool((channel_mean.abs() < 0.02).all())  # normalised with (near) the training statistics
    sources = [root / cifar.JPG_ARCHIVE]
    assert entry_path(cifar_cache, "cifar10", "train", sources).is_file()
    assert entry_path(cifar_cache, "cifar10", "test", sources).is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cifar, "read_tar_splits", no_decoding)
    again = load_dataset("cifar10", "test", root=root, cache_dir=cifar_cache)
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)


# ---------------------------------------------------------------------------------------------
# official formats, built tiny


def test_mnist_idx_plain_and_gzip(tmp_path, monkeypatch):
    images = write_mnist(tmp_path / "gz", gz=True)
    write_mnist(tmp_path / "raw", gz=False)
    a = load_dataset("mnist", "train", root=tmp_path / "gz")
    b = load_dataset("mnist", "train", root=tmp_path / "raw")
    assert a.x.shape == (6, 1, 28, 28) and torch.equal(a.x, b.x)
    assert torch.equal(torch.round(a.x[:, 0] * 255).to(torch.uint8), torch.from_numpy(images["train"]))
    monkeypatch.setenv("NORA_DATA_MNIST", str(tmp_path / "raw"))
    assert len(load_dataset("mnist", "test")) == 4
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # a folder holding only the train files
        (tmp_path / "raw" / name).unlink()
    assert len(load_dataset("mnist", "train")) == 6
    with pytest.raises(NoraError, match="t10k-images-idx3-ubyte.*not found in .*raw"):
        load_dataset("mnist", "test")


def test_cifar10_pickles_directory_and_archive(tmp_path):
    expected = write_cifar_batches(tmp_path / "dir" / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", root=tmp_path / "dir", cache_dir=tmp_path / "cache")
    test = load_dataset("cifar10", "test", root=tmp_path / "dir", cache_dir=tmp_path / "cache")
    assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    assert train.y.tolist() == expected["train_y"].tolist() and test.y.tolist() == expected["test_y"].tolist()
    assert np.array_equal(denormalise(train).reshape(10, 3072), expected["train_x"])

    archive_root = tmp_path / "archive"
    archive_root.mkdir()
    with tarfile.open(archive_root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "dir" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_archive = load_dataset("cifar10", "train", root=archive_root, cache_dir=tmp_path / "cache")
    assert torch.equal(from_archive.x, train.x) and torch.equal(from_archive.y, train.y)

    batch = tmp_path / "dir" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:-200])
    with pytest.raises(NoraError, match="test_batch is corrupt or truncated"):
        load_dataset("cifar10", "test", root=tmp_path / "dir", cache_dir=tmp_path / "cache")


class _SystemCall:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize("payload", [_SystemCall, _Eval])
def test_cifar10_malicious_pickle_is_refused(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    marker = tmp_path / "pwned"
    evil = {b"data": payload(marker), b"labels": [0]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(NoraError, match="refusing to unpickle"):
        load_dataset("cifar10", "train", root=tmp_path, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_cifar10_image_folder(tmp_path):
    for split in ("train", "test"):
        for label, name in enumerate(cifar.CLASSES):
            save_image(tmp_path / split / name / "0000.png", (label * 20, 0, 255 - label * 20), size=32)
    ds = load_dataset("cifar10", "test", root=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.x.shape == (10, 3, 32, 32) and ds.y.tolist() == list(range(10))
    pixels = denormalise(ds)
    assert pixels[3, 0, 0, 0] == 60 and pixels[3, 2, 5, 5] == 195


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": images, "y": np.array([[1], [10], [3], [10], [5]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": images[..., :2], "y": np.array([[10], [9]], dtype=np.uint8)})
    train = load_dataset("svhn", "train", root=tmp_path)
    assert train.x.shape == (5, 3, 32, 32) and train.y.tolist() == [1, 0, 3, 0, 5]
    assert np.array_equal(denormalise(train), images.transpose(3, 2, 0, 1))
    assert load_dataset("svhn", "test", root=tmp_path).y.tolist() == [0, 9]
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(NoraError, match="test_32x32.mat"):
        load_dataset("svhn", "test", root=tmp_path)


def test_tiny_imagenet_folder(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n02000000", "n01000000"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {"n01000000": (255, 0, 0), "n02000000": (0, 0, 255)}
    for wnid, colour in colours.items():
        for i in range(3):
            save_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    save_image(base / "train" / "n01000000" / "images" / "grey.png", 128, size=48, mode="L")  # resized, made RGB
    save_image(base / "val" / "images" / "val_0.JPEG", colours["n02000000"])
    save_image(base / "val" / "images" / "val_1.JPEG", colours["n01000000"])
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02000000\t0\t0\t63\t63\nval_1.JPEG\tn01000000\t1\t2\t3\t4\n")
    train = load_dataset("tiny-imagenet", "train", root=tmp_path, cache_dir=tmp_path / "cache")
    test = load_dataset("tiny-imagenet", "test", root=tmp_path, cache_dir=tmp_path / "cache")
    assert train.x.shape == (7, 3, 64, 64) and test.x.shape == (2, 3, 64, 64)
    assert train.class_names == sorted(wnids) and torch.bincount(train.y).tolist() == [4, 3]
    assert test.y.tolist() == [1, 0]
    red = denormalise(test)[1].mean(axis=(1, 2))
    assert red[0] > 240 and red[2] < 15  # val_1 is red and labelled n01000000
    (base / "val" / "images" / "val_0.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(NoraError, match="cannot decode image .*val_0.JPEG"):
        load_dataset("tiny-imagenet", "test", root=tmp_path, cache_dir=tmp_path / "cache")


def write_speech_commands(root: Path) -> None:
    words = {"yes": 300, "no": 400, "up": 500, "bed": 600, "cat": 700}
    val, test = [], []
    for word, freq in words.items():
        for i in range(4):
            write_wav(root / word / f"spk{i}_nohash_0.wav", tone(freq + 10 * i, 0.6 + 0.2 * i))
        val.append(f"{word}/spk2_nohash_0.wav")
        test.append(f"{word}/spk3_nohash_0.wav")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    noise = np.random.default_rng(3).normal(0, 0.1, 32_000)
    write_wav(root / "_background_noise_" / "white_noise.wav", noise)


def test_speech_commands_folder(tmp_path):
    root = tmp_path / "sc"
    write_speech_commands(root)
    splits = {s: load_dataset("speech-commands", s, root=root, cache_dir=tmp_path / "cache") for s in ("train", "val", "test")}
    train = splits["train"]
    # 3 known words x 2 train clips; "unknown" subsampled and "silence" generated to 2 (an average word class)
    assert len(train) == 10 and len(splits["val"]) == 5 and len(splits["test"]) == 5
    counts = torch.bincount(train.y, minlength=12).tolist()
    assert counts[:3] == [2, 2, 2] and counts[10:] == [2, 2] and train.class_names[10:] == ["unknown", "silence"]
    assert train.input_shape == (1, N_MFCC, N_FRAMES) == (1, 10, 49)
    assert all(bool(torch.isfinite(ds.x).all()) for ds in splits.values())
    assert splits["test"].mean == train.mean
    again = load_dataset("speech-commands", "train", root=root, cache_dir=tmp_path / "other-cache")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)  # deterministic silence/unknown


# ---------------------------------------------------------------------------------------------
# bad input


def test_unknown_dataset_lists_names():
    with pytest.raises(NoraError, match="unknown dataset 'imagenet-1k'.*mnist.*speech-commands"):
        load_dataset("imagenet-1k")
    with pytest.raises(NoraError, match="no split 'val'"):
        load_dataset("digits", "val")


def test_missing_root_names_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(NoraError, match="not found at .*nowhere.*--download") as info:
        load_dataset("mnist", root=missing)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("NORA_DATA", str(tmp_path / "data"))
    with pytest.raises(NoraError, match=str(tmp_path / "data" / "cifar10")):
        load_dataset("cifar10")


def test_truncated_and_wrong_magic_idx(tmp_path):
    write_mnist(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(NoraError, match="train-images-idx3-ubyte is corrupt or truncated"):
        load_dataset("mnist", root=tmp_path)
    write_mnist(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes((0x803).to_bytes(4, "big") + labels.read_bytes()[4:])
    with pytest.raises(NoraError, match="t10k-labels-idx1-ubyte is corrupt.*magic 0x803"):
        load_dataset("mnist", "test", root=tmp_path)
    write_idx(labels, np.zeros(3, dtype=np.uint8), 0x801)  # 3 labels for 4 images
    with pytest.raises(NoraError, match="3 labels for 4 images"):
        load_dataset("mnist", "test", root=tmp_path)


def test_truncated_gzip_idx(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(NoraError, match="corrupt or truncated"):
        load_dataset("mnist", root=tmp_path)


def test_corrupt_wav(tmp_path):
    bad = tmp_path / "recordings" / "3_alice_7.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(NoraError, match="3_alice_7.wav is corrupt"):
        read_wav(bad)
    good = write_wav(tmp_path / "ok.wav", tone(440, 0.5))
    truncated = tmp_path / "recordings" / "3_alice_7.wav"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(NoraError, match="corrupt or truncated"):
        read_wav(truncated)
    write_wav(tmp_path / "recordings" / "4_alice_1.wav", tone(300, 0.5), rate=8000)
    with pytest.raises(NoraError, match="3_alice_7.wav"):
        load_dataset("fsdd", "train", root=tmp_path, cache_dir=tmp_path / "cache")


def test_corrupt_cache_is_rebuilt(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(6, dtype=np.uint8).reshape(2, 3), "y": np.array([0, 1])}

    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    first = cached_arrays(tmp_path, "toy", "train", [source], ("x", "y"), build)
    entry = entry_path(tmp_path, "toy", "train", [source])
    entry.write_bytes(entry.read_bytes()[:50])
    second = cached_arrays(tmp_path, "toy", "train", [source], ("x", "y"), build)
    third = cached_arrays(tmp_path, "toy", "train", [source], ("x", "y"), build)
    assert len(calls) == 2 and np.array_equal(first["x"], second["x"]) and np.array_equal(third["y"], [0, 1])
    os.utime(source, ns=(0, 0))  # a changed source invalidates the entry
    cached_arrays(tmp_path, "toy", "train", [source], ("x", "y"), build)
    assert len(calls) == 3 and len(list(entry.parent.glob("toy-train-*.npz"))) == 1


# ---------------------------------------------------------------------------------------------
# downloads (never leave this machine)


def test_download_unreachable_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(NoraError, match=r"could not download http://127\.0\.0\.1:9/x: "):
        download.download_file("http://127.0.0.1:9/x", tmp_path / "x", timeout=5)
    assert time.monotonic() - start < 10
    assert list(tmp_path.iterdir()) == []


def test_load_with_download_reports_failure(tmp_path, monkeypatch):
    fake = [download.Resource("train-images-idx3-ubyte.gz", ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"), None)]
    monkeypatch.setitem(download.DOWNLOADS, "mnist", fake)
    with pytest.raises(NoraError, match="could not download http://127.0.0.1:9/a: .*could not download http://127.0.0.1:9/b"):
        load_dataset("mnist", root=tmp_path / "mnist", download=True, timeout=5)
    assert not any(p.is_file() for p in (tmp_path / "mnist").iterdir())


def test_checksum_mismatch_removes_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello")
    download.verify_checksum(path, "5d41402abc4b2a76b9719d911017c592")  # md5("hello")
    assert path.exists()
    with pytest.raises(NoraError, match="checksum mismatch"):
        download.verify_checksum(path, "0" * 32)
    assert not path.exists()


def test_fetch_unpacks_fsdd_archive_from_local_url(tmp_path, monkeypatch, capsys):
    upstream = tmp_path / "upstream" / "free-spoken-digit-dataset-master" / "recordings"
    for digit in range(10):
        for take in (0, 7):
            write_wav(upstream / f"{digit}_bob_{take}.wav", tone(200 + 50 * digit, 0.4), rate=8000)
    (upstream.parent / "README.md").write_text("readme")
    archive = tmp_path / "fsdd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(upstream.parent, arcname=upstream.parent.name)
    resource = download.Resource("fsdd.tar.gz", (archive.as_uri(),), None, download.DOWNLOADS["fsdd"][0].unpack)
    monkeypatch.setitem(download.DOWNLOADS, "fsdd", [resource])
    ds = load_dataset("fsdd", "test", root=tmp_path / "fsdd", download=True, cache_dir=tmp_path / "cache")
    assert len(ds) == 10 and ds.input_shape == (1, 10, 49)
    assert sorted(p.name for p in (tmp_path / "fsdd").iterdir()) == ["recordings"]
    assert "not verified" in capsys.readouterr().err

    bad = download.Resource("f.bin", (archive.as_uri(),), "0" * 32)
    monkeypatch.setitem(download.DOWNLOADS, "fsdd", [bad])
    with pytest.raises(NoraError, match="checksum mismatch"):
        download.fetch("fsdd", tmp_path / "other")
    assert list((tmp_path / "other").iterdir()) == []


def test_unpack_refuses_unsafe_paths(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    (tmp_path / "root").mkdir()
    with pytest.raises(NoraError, match="unsafe"):
        download.unpack(archive, tmp_path / "root", lambda name: name)
    assert not (tmp_path / "escaped.txt").exists()
