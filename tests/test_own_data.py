"""A user's own data: arrays (.npz / .npy folders) and image folders, with splits, normalisation, caching."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from nora.data import check_fits, load_dataset
from nora.data import custom
from nora.errors import NoraError


def _images(n=240, classes=("cat", "dog", "emu"), shape=(20, 20, 3), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = np.array(classes)[rng.integers(0, len(classes), n)]
    return x, y


def _rows(ds):
    return {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in ds.x}


def test_npz_split_is_seeded_stratified_disjoint_and_normalised_with_train_stats(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    path = str(tmp_path / "d.npz")
    train = load_dataset("arrays", "train", path=path)
    test = load_dataset("arrays", "test", path=path)
    assert train.input_shape == (3, 20, 20)  # channels-last images moved to [C, H, W]
    assert train.class_names == ["cat", "dog", "emu"] and train.num_classes == 3
    assert len(train) + len(test) == 240 and abs(len(test) - 48) <= 3
    for label in range(3):  # every class in both splits, ~20 % held out
        n_train, n_test = int((train.y == label).sum()), int((test.y == label).sum())
        assert n_test > 0 and abs(n_test / (n_train + n_test) - 0.2) < 0.05
    assert not _rows(train) & _rows(test)
    again = load_dataset("arrays", "test", path=path)
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    other = load_dataset("arrays", "test", path=path, split_seed=1)
    assert not torch.equal(other.y, test.y) or not torch.equal(other.x, test.x)
    # Per-channel normalisation with the training split's statistics, for both splits.
    mean, std = np.array(train.mean), np.array(train.std)
    assert np.allclose(train.x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    assert np.allclose(train.x.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-4)
    raw = x.transpose(0, 3, 1, 2).astype(np.float64) / 255
    first_test = np.flatnonzero(np.isin(np.arange(240), custom.split_indices(
        np.searchsorted(["cat", "dog", "emu"], y), 0.2, 0)[1]))[0]
    expected = (raw[first_test] - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(test.x[0].numpy(), expected, atol=1e-5)
    quarter = load_dataset("arrays", "test", path=path, test_fraction=0.5)
    assert abs(len(quarter) - 120) <= 3


def test_describe_records_what_model_json_needs(tmp_path):
    x, y = _images(60)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset("arrays", "train", path=str(tmp_path / "d.npz"))
    info = ds.describe()
    assert info["name"] == "arrays" and info["path"] == str((tmp_path / "d.npz").resolve())
    assert info["split"] == "train" and info["input_shape"] == [3, 20, 20] and info["num_classes"] == 3
    assert info["class_names"] == ["cat", "dog", "emu"] and info["samples"] == len(ds)
    assert len(info["sha256"]) == 64 and info["sha256"] == ds.subset(range(len(ds))).content_hash()
    assert ds.subset(10).describe()["sha256"] != info["sha256"] and ds.subset(10).describe()["path"] == info["path"]
    x[0, 0, 0, 0] ^= 1
    np.savez(tmp_path / "e.npz", x=x, y=y)
    assert load_dataset("arrays", "train", path=str(tmp_path / "e.npz")).content_hash() != info["sha256"]
    plain = hashlib.sha256(f"{tuple(ds.x.shape)}|{tuple(ds.y.shape)}|".encode() + ds.x.numpy().tobytes()
                           + ds.y.numpy().tobytes()).hexdigest()
    assert info["sha256"] == plain and ds.subset(0).describe()["samples"] == 0
    builtin = load_dataset("digits", "test").describe()
    assert builtin["name"] == "digits" and builtin["split"] == "test" and builtin["samples"] == 450


def test_given_splits_npy_folder_many_classes_and_label_forms(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "x_train.npy", rng.normal(size=(130, 2, 16)).astype(np.float32))
    np.save(folder / "y_train.npy", np.arange(130) % 13)
    np.save(folder / "x_test.npy", rng.normal(size=(26, 2, 16)).astype(np.float32))
    np.save(folder / "y_test.npy", np.arange(26) % 13)
    train = load_dataset("arrays", "train", path=str(folder))
    assert train.input_shape == (1, 2, 16)  # [N, H, W] reads as grey images
    train = load_dataset("arrays", "train", path=str(folder), layout="keep")
    test = load_dataset("arrays", "test", path=str(folder), normalize="none", layout="keep")
    assert train.input_shape == (2, 16) and train.num_classes == 13 and len(test) == 26
    assert train.class_names == [str(i) for i in range(13)]
    assert np.allclose(test.x.numpy(), np.load(folder / "x_test.npy"))

    # Integer labels with gaps keep their values as names; one-hot rows become indices.
    x = rng.normal(size=(40, 5)).astype(np.float64)
    np.savez(tmp_path / "gaps.npz", x=x, y=np.array([3, 7, 9, 11] * 10))
    gaps = load_dataset("arrays", "train", path=str(tmp_path / "gaps.npz"))
    assert gaps.class_names == ["3", "7", "9", "11"] and set(gaps.y.tolist()) == {0, 1, 2, 3}
    assert np.allclose(gaps.x.mean(0).numpy(), 0, atol=1e-5)  # flat vectors: per feature
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(4)[np.arange(40) % 4])
    assert load_dataset("arrays", "train", path=str(tmp_path / "onehot.npz")).num_classes == 4
    named = load_dataset("arrays", "train", path=str(tmp_path / "onehot.npz"),
                         class_names=["north", "east", "south", "west"])
    assert named.class_names == ["north", "east", "south", "west"]


def test_test_path_grey_images_and_layouts(tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "train.npz", x=rng.integers(0, 256, (50, 20, 20), dtype=np.uint8), y=np.arange(50) % 5)
    np.savez(tmp_path / "test.npz", x=rng.integers(0, 256, (10, 20, 20), dtype=np.uint8), y=np.arange(10) % 5)
    options = {"path": str(tmp_path / "train.npz"), "test_path": str(tmp_path / "test.npz")}
    train, test = load_dataset("arrays", "train", **options), load_dataset("arrays", "test", **options)
    assert train.input_shape == test.input_shape == (1, 20, 20) and len(train) == 50 and len(test) == 10
    assert len(train.mean) == 1 and test.source == str((tmp_path / "train.npz").resolve())
    kept = load_dataset("arrays", "train", layout="keep", **options)
    assert kept.input_shape == (20, 20)
    np.savez(tmp_path / "nchw.npz", x=rng.normal(size=(12, 3, 8, 3)).astype(np.float32), y=np.arange(12) % 2)
    assert load_dataset("arrays", "train", path=str(tmp_path / "nchw.npz"), layout="nchw").input_shape == (3, 8, 3)
    assert load_dataset("arrays", "train", path=str(tmp_path / "nchw.npz"), layout="nhwc").input_shape == (3, 3, 8)


@pytest.mark.parametrize(
    ("arrays", "options", "message"),
    [
        (None, {}, r"dataset 'arrays' needs data.path"),
        (None, {"path": "{d}/missing.npz"}, r"data.path .*missing.npz not found"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(5)}, {}, r"has 4 inputs x \(4, 3\) but labels y of shape \(5,\)"),
        ({"x": np.zeros((4, 3)), "y": np.array([0.5, 1, 0, 1])}, {}, r"labels are fractional numbers"),
        ({"x": np.full((4, 3), np.nan), "y": np.array([0, 1, 0, 1])}, {}, r"contain NaN or infinity"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, {}, r"all samples have the same label"),
        ({"inputs": np.zeros((4, 3)), "y": np.zeros(4)}, {}, r"has no array 'x' \(found: y\)"),
        ({"x": np.zeros((4, 3)), "y": np.arange(4) % 2}, {"test_fraction": 1.5}, r"test_fraction must be a number between 0 and 1"),
        ({"x": np.zeros((4, 3)), "y": np.arange(4) % 2}, {"layout": "hwc"}, r"layout must be one of auto, nchw, nhwc, keep"),
        ({"x": np.zeros((4, 3)), "y": np.arange(4) % 2}, {"normalize": "minmax"}, r"normalize must be one of"),
        ({"x": np.zeros((4, 3)), "y": np.arange(4) % 2}, {"image_size": 8}, r"dataset 'arrays' has no option 'image_size'"),
        ({"x": np.zeros((4, 3)), "y": np.arange(4) % 3}, {"class_names": ["a", "b"]}, r"labels run 0..2, but class_names names 2 classes"),
        ({"x": np.zeros((6, 3)), "y": np.arange(6)}, {}, r"too few samples per class to hold out a test split"),
        ({"x_train": np.zeros((4, 3)), "y_train": np.arange(4) % 2, "x_test": np.zeros((2, 5)), "y_test": np.arange(2)},
         {}, r"test samples have shape \(5,\) .* but training samples \(3,\)"),
        ({"x_train": np.zeros((4, 3)), "y_train": np.arange(4) % 2, "x_test": np.zeros((2, 3)), "y_test": np.arange(2)},
         {"test_fraction": 0.3}, r"the test split is given by .*drop test_fraction"),
    ],
)
def test_bad_arrays_fail_with_one_line(tmp_path, arrays, options, message):
    if arrays is not None:
        np.savez(tmp_path / "d.npz", **arrays)
        options = {"path": str(tmp_path / "d.npz"), **options}
    options = {k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(NoraError, match=message) as info:
        load_dataset("arrays", "train", **options)
    assert "\n" not in str(info.value)


def test_unreadable_array_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "objdir").mkdir()
    np.save(tmp_path / "objdir" / "x.npy", np.array([{"a": 1}, {}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "objdir" / "y.npy", np.arange(2))
    with pytest.raises(NoraError, match=r"pickled Python objects are not read"):
        load_dataset("arrays", "train", path=str(tmp_path / "objdir"))
    with pytest.raises(NoraError, match=r"is one array; give the folder holding x.npy and y.npy"):
        load_dataset("arrays", "train", path=str(tmp_path / "objects.npy"))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(NoraError, match=r"bad.npz"):
        load_dataset("arrays", "train", path=str(tmp_path / "bad.npz"))
    with pytest.raises(NoraError, match=r"dataset 'mnist' has no option 'test_path'"):
        load_dataset("mnist", "train", test_path="x")
    load_dataset("digits", "train", path=None, image_size=None)  # options left at None are ignored


# ------------------------------------------------------------------------------ image folders
def _write_folder(root, classes, n=6, size=(12, 10), mode="L", seed=0, sizes=None):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = sizes[i % len(sizes)] if sizes else size
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / cls / f"{i:03d}.png")


def test_folder_with_train_and_test_any_class_names(tmp_path):
    from PIL import Image

    classes = ["a cat", "Dog", "zebra-2"]
    _write_folder(tmp_path / "img" / "train", classes)
    _write_folder(tmp_path / "img" / "test", classes, n=2, seed=1)
    train = load_dataset("folder", "train", path=str(tmp_path / "img"))
    test = load_dataset("folder", "test", path=str(tmp_path / "img"))
    assert train.class_names == sorted(classes) and train.input_shape == (1, 12, 10) and len(train) == 18
    assert len(test) == 6 and test.y.tolist() == [0, 0, 1, 1, 2, 2]
    pixels = np.asarray(Image.open(tmp_path / "img" / "test" / "Dog" / "000.png"), dtype=np.float64) / 255
    assert np.allclose(test.x[0, 0].numpy(), (pixels - train.mean[0]) / train.std[0], atol=1e-5)
    rgb = load_dataset("folder", "test", path=str(tmp_path / "img"), image_size=[8, 6], channels=3)
    assert rgb.input_shape == (3, 8, 6) and len(rgb.mean) == 3


def test_folder_split_by_fraction_and_mixed_modes(tmp_path):
    _write_folder(tmp_path / "all", ["x", "y"], n=10, mode="L")
    _write_folder(tmp_path / "all", ["y"], n=3, mode="RGB", seed=3)  # overwrites 3 of y's images with colour
    train = load_dataset("folder", "train", path=str(tmp_path / "all"))
    test = load_dataset("folder", "test", path=str(tmp_path / "all"))
    assert train.input_shape == (3, 12, 10)  # grey and colour mixed: all colour
    assert len(train) == 16 and len(test) == 4 and not _rows(train) & _rows(test)
    grey = load_dataset("folder", "train", path=str(tmp_path / "all"), channels=1)
    assert grey.input_shape == (1, 12, 10)


def test_folder_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    _write_folder(tmp_path / "img", ["p", "q"], n=5)
    first = load_dataset("folder", "train", path=str(tmp_path / "img"), cache_dir=str(tmp_path / "cache"))

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(custom, "decode_folder", fail)
    again = load_dataset("folder", "train", path=str(tmp_path / "img"), cache_dir=str(tmp_path / "cache"))
    assert torch.equal(first.x, again.x)
    with pytest.raises(AssertionError, match="decoded again"):  # other options: another cache entry
        load_dataset("folder", "train", path=str(tmp_path / "img"), cache_dir=str(tmp_path / "cache"), image_size=4)


def test_bad_folders_fail_with_one_line(tmp_path):
    _write_folder(tmp_path / "sizes", ["a", "b"], n=4, sizes=[(12, 10), (9, 9)])
    with pytest.raises(NoraError, match=r"images differ in size \(12x10 in .*, 9x9 in .*\); set data.image_size"):
        load_dataset("folder", "train", path=str(tmp_path / "sizes"))
    assert load_dataset("folder", "train", path=str(tmp_path / "sizes"), image_size=9).input_shape == (1, 9, 9)
    _write_folder(tmp_path / "one", ["only"], n=3)
    with pytest.raises(NoraError, match=r"needs one subfolder per class \(at least 2\), found 1"):
        load_dataset("folder", "train", path=str(tmp_path / "one"))
    _write_folder(tmp_path / "tt" / "train", ["a", "b"], n=3)
    _write_folder(tmp_path / "tt" / "test", ["a", "c"], n=1)
    with pytest.raises(NoraError, match=r"test class folder 'c' .* has no training folder"):
        load_dataset("folder", "test", path=str(tmp_path / "tt"))
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "b").mkdir()
    (tmp_path / "corrupt" / "a" / "x.png").write_bytes(b"not an image")
    (tmp_path / "corrupt" / "b" / "y.png").write_bytes(b"not an image")
    with pytest.raises(NoraError, match=r"cannot decode image .*x.png"):
        load_dataset("folder", "train", path=str(tmp_path / "corrupt"))
    for options, message in (({"image_size": 0}, "image_size must be a positive integer"),
                             ({"channels": 2}, "channels must be one of 1, 3, 4"),
                             ({"path": str(tmp_path / "corrupt" / "a" / "x.png")}, "is not a folder")):
        with pytest.raises(NoraError, match=message):
            load_dataset("folder", "train", **{"path": str(tmp_path / "sizes"), **options})


def test_real_mnist_as_an_image_folder(tmp_path, shared_data):
    """Real MNIST digits written as PNGs under named class folders read back pixel for pixel."""
    from PIL import Image

    mnist = load_dataset("mnist", "test", root=shared_data / "mnist").subset(200)
    raw = np.rint(mnist.x.numpy()[:, 0] * 255).astype(np.uint8) if mnist.mean is None else None
    if raw is None:  # normalised: undo it
        raw = np.rint((mnist.x.numpy()[:, 0] * mnist.std[0] + mnist.mean[0]) * 255).astype(np.uint8)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for i, (image, label) in enumerate(zip(raw, mnist.y.tolist())):
        folder = tmp_path / "digits" / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    ds = load_dataset("folder", "train", path=str(tmp_path / "digits"), test_fraction=0.25, normalize="none")
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10 and ds.class_names == sorted(names)
    by_pixels = {image.tobytes(): names[label] for image, label in zip(raw, mnist.y.tolist())}
    got = np.rint(ds.x.numpy()[:, 0] * 255).astype(np.uint8)
    assert all(by_pixels[image.tobytes()] == ds.class_names[label] for image, label in zip(got, ds.y.tolist()))


# ------------------------------------------------------------------------------ shape checks
def test_check_fits_names_both_shapes(tmp_path):
    x, y = _images(40, shape=(20, 20))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset("arrays", "test", path=str(tmp_path / "d.npz"))
    check_fits((1, 20, 20), 3, ds, "ok")
    check_fits(None, None, ds, "nothing known")
    with pytest.raises(NoraError) as info:
        check_fits((1, 28, 28), 10, ds, "checkpoint runs/m vs its test data")
    assert str(info.value) == (f"checkpoint runs/m vs its test data: expected inputs 1x28x28 with 10 classes, but dataset "
                               f"'arrays' ({(tmp_path / 'd.npz').resolve()}) has 1x20x20 with 3 classes")
    with pytest.raises(NoraError, match="expected inputs 1x20x20 with 4 classes"):
        check_fits((1, 20, 20), 4, ds, "classes")
    from nora.models import build_model

    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(NoraError, match=r"run b vs run a: expected inputs 1x20x20 with 3 classes, but MLP has 1x8x8 with 10"):
        check_fits(ds.input_shape, ds.num_classes, model, "run b vs run a")
