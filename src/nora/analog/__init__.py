"""Analog in-memory computing models behind the ``Hardware`` protocol of ``nora.sim.perturbation``.

``TileConfig`` (crossbar tiles, PCM device model), ``OrderedMACConfig`` (the order-aware MAC of a
BrainScaleS-2-like processor) and ``HILConfig`` (a layer's forward on an external executor) each
``attach(model, seeds)`` to any model with Linear/Conv1d/Conv2d layers and come back off with
``detach()``. Configurations come from presets, dicts or YAML files.
"""

from nora.analog.config import (
    PRESETS,
    ClipConfig,
    DeviceConfig,
    ForwardConfig,
    MappingConfig,
    ModifierConfig,
    OrderedMACConfig,
    TileConfig,
    check_times,
    hardware_from_dict,
    load_hardware,
    preset,
)
from nora.analog.hil import HILConfig, ProcessExecutor

__all__ = [
    "PRESETS",
    "ClipConfig",
    "DeviceConfig",
    "ForwardConfig",
    "HILConfig",
    "MappingConfig",
    "ModifierConfig",
    "OrderedMACConfig",
    "ProcessExecutor",
    "TileConfig",
    "check_times",
    "hardware_from_dict",
    "load_hardware",
    "preset",
]
