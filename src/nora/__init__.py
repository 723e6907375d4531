"""nora: simulate, train against and measure noise in neural networks on imperfect hardware."""

from nora.errors import NoraError
from nora.noise import (
    GaussianAdditive,
    GaussianCombined,
    GaussianMultiplicative,
    NoiseModel,
    WeightNoise,
    clamp_after_step,
    make_noise,
)
from nora.sim import NoiseInjector, Site, attach, list_sites, override_compute

__version__ = "0.1.0"

sites = list_sites

__all__ = [
    "GaussianAdditive",
    "GaussianCombined",
    "GaussianMultiplicative",
    "NoiseInjector",
    "NoiseModel",
    "NoraError",
    "Site",
    "WeightNoise",
    "attach",
    "clamp_after_step",
    "list_sites",
    "make_noise",
    "override_compute",
    "sites",
]
