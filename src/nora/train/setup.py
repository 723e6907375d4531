"""Turn config sections into live objects: the noise specification and the data sets."""

from __future__ import annotations

from nora.config import DataConfig, NoiseConfig
from nora.sim.spec import NoiseSpec, spec_from_config


def noise_spec(cfg: NoiseConfig | None, magnitude: float | None = None, *, training: bool = False) -> NoiseSpec:
    """The ``NoiseSpec`` of a config section (``magnitude`` overrides its sigma); clean for None.

    Without ``mode`` set, training noise is fast (bank draws: training needs fresh-looking noise at
    memory speed) and evaluation noise exact (i.i.d. draws: reported accuracies carry no bank structure).
    """
    return spec_from_config(cfg, magnitude=magnitude, default_mode="fast" if training else "exact")


def load_data(cfg: DataConfig):
    """Train and test ``ArrayDataset``s, cut to the configured subsets."""
    from nora.data import DATA_OPTIONS, check_fits, load_dataset

    options = {"root": cfg.root, "download": cfg.download, "cache_dir": cfg.cache_dir,
               **{key: getattr(cfg, key) for key in DATA_OPTIONS}}
    train = load_dataset(cfg.dataset, split="train", **options)
    test = load_dataset(cfg.dataset, split="test", **options)
    check_fits(train.input_shape, train.num_classes, test, "train vs test data")
    if cfg.train_subset:
        train = train.subset(cfg.train_subset)
    if cfg.test_subset:
        test = test.subset(cfg.test_subset)
    return train, test
