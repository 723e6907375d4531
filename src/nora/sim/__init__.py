"""Simulation: where noise goes in a model (sites, placement, repeats) and layer compute overrides."""

from nora.sim.compute import ComputeModel, ComputeOverride, override_compute
from nora.sim.injector import NoiseInjector, SiteNoise, attach, injector_of, list_sites
from nora.sim.sites import DEFAULT_SITE_TYPES, Site, discover_sites, select_sites

__all__ = [
    "DEFAULT_SITE_TYPES",
    "ComputeModel",
    "ComputeOverride",
    "NoiseInjector",
    "Site",
    "SiteNoise",
    "attach",
    "discover_sites",
    "injector_of",
    "list_sites",
    "override_compute",
    "select_sites",
]
