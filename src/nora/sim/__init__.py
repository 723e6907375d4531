"""Simulation: where noise goes in a model (sites, placement, repeats), the noise specification,
the one handle that applies it, and layer compute overrides."""

from nora.sim.compute import ComputeModel, ComputeOverride, override_compute
from nora.sim.injector import (
    Calibration,
    NoiseInjector,
    SiteNoise,
    attach,
    injector_of,
    list_sites,
    repetition_cost,
    resolve_plan,
)
from nora.sim.perturbation import AttachedHardware, Hardware
from nora.sim.sites import CATEGORIES, Site, SiteHints, SitePolicy, discover_sites, select_sites
from nora.sim.spec import NoiseSpec, WeightSpec, spec_from_config

__all__ = [
    "CATEGORIES",
    "AttachedHardware",
    "Calibration",
    "ComputeModel",
    "ComputeOverride",
    "Hardware",
    "NoiseInjector",
    "NoiseSpec",
    "Site",
    "SiteHints",
    "SiteNoise",
    "SitePolicy",
    "WeightSpec",
    "attach",
    "discover_sites",
    "injector_of",
    "list_sites",
    "override_compute",
    "repetition_cost",
    "resolve_plan",
    "select_sites",
    "spec_from_config",
]
