"""Simulation: where noise goes in a model (sites, placement, repeats) and layer compute overrides."""

from nora.sim.compute import ComputeModel, ComputeOverride, override_compute
from nora.sim.injector import NoiseInjector, SiteNoise, attach, injector_of, list_sites
from nora.sim.sites import (
    DEFAULT_SITE_TYPES,
    Site,
    default_site_types,
    discover_sites,
    register_site_type,
    select_sites,
)

__all__ = [
    "DEFAULT_SITE_TYPES",
    "ComputeModel",
    "ComputeOverride",
    "NoiseInjector",
    "Site",
    "SiteNoise",
    "attach",
    "default_site_types",
    "register_site_type",
    "discover_sites",
    "injector_of",
    "list_sites",
    "override_compute",
    "select_sites",
]
