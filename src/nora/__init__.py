"""nora: simulate, train against and measure noise in neural networks on imperfect hardware."""

from nora.errors import NoraError
from nora.version import __version__
from nora.noise import (
    GaussianAdditive,
    GaussianCombined,
    GaussianMultiplicative,
    NoiseModel,
    WeightNoise,
    clamp_after_step,
    make_noise,
)
from nora.seeds import SeedTree
from nora.sim import NoiseInjector, NoiseSpec, Site, SitePolicy, WeightSpec, attach, list_sites, override_compute


sites = list_sites

__all__ = [
    "__version__",
    "GaussianAdditive",
    "GaussianCombined",
    "GaussianMultiplicative",
    "NoiseInjector",
    "NoiseModel",
    "NoiseSpec",
    "SeedTree",
    "SitePolicy",
    "WeightSpec",
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
