"""Turn config sections into live objects: noise models, injectors, weight noise, data loaders."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nora.config import DataConfig, NoiseConfig
from nora.noise.models import NoiseModel, noise_from_dict
from nora.noise.weight import WeightNoise
from nora.sim.injector import NoiseInjector


def noise_model(cfg: NoiseConfig) -> NoiseModel:
    return noise_from_dict(cfg.model_spec())


def injector_options(cfg: NoiseConfig) -> dict[str, Any]:
    return {
        "sites": cfg.sites,
        "sigmas": cfg.sigmas,
        "budget": cfg.budget,
        "repeats": cfg.repeats,
        "site_types": cfg.site_types,
        "include_input": cfg.include_input,
    }


def attach_noise(
    model: nn.Module, cfg: NoiseConfig | None, *, when: str, seed: int, example_input: torch.Tensor
) -> tuple[NoiseInjector | None, WeightNoise | None]:
    """Activation noise (if sigma or a sigma map is set) and weight noise (if configured)."""
    if cfg is None:
        return None, None
    injector = None
    if cfg.sigma > 0 or cfg.sigmas:
        injector = NoiseInjector(
            model, noise_model(cfg), example_input=example_input, seed=seed, when=when, **injector_options(cfg)
        )
    weights = None
    if cfg.weight is not None and cfg.weight.sigma > 0:
        spec = {"kind": cfg.weight.kind, "sigma": cfg.weight.sigma, "relative": cfg.weight.relative}
        weights = WeightNoise(model, noise_from_dict(spec), seed=seed + 1, when=when)
    return injector, weights


def load_data(cfg: DataConfig):
    """Train and test ``ArrayDataset``s, cut to the configured subsets."""
    from nora.data import load_dataset

    options = {"root": cfg.root, "download": cfg.download, "cache_dir": cfg.cache_dir}
    train = load_dataset(cfg.dataset, split="train", **options)
    test = load_dataset(cfg.dataset, split="test", **options)
    if cfg.train_subset:
        train = train.subset(cfg.train_subset)
    if cfg.test_subset:
        test = test.subset(cfg.test_subset)
    return train, test
