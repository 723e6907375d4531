"""The contract for hardware models that the measurement engine can apply beside Gaussian noise.

Gaussian noise at module outputs is the abstraction; a hardware model (an analog crossbar tile, an
ordering-aware MAC, a hardware-in-the-loop executor) replaces a layer's computation instead. Anything
that follows this protocol can sit in a ``NoiseSpec`` (``hardware=``) and is then applied by every
command: the engine attaches it once per evaluation, reseeds it per repeat from the seed tree
(``seeds`` is a ``nora.seeds.SeedTree`` node owned by that repeat), and detaches it afterwards.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn

from nora.seeds import SeedTree


@runtime_checkable
class AttachedHardware(Protocol):
    """A hardware model living on one network."""

    def reseed(self, seeds: SeedTree) -> None:
        """Start a fresh, reproducible realisation (e.g. a new programmed chip) from ``seeds``."""

    def detach(self) -> nn.Module:
        """Restore the network's own computation and return the network."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored with every result."""


@runtime_checkable
class Hardware(Protocol):
    """A hardware configuration (data), able to attach itself to a network."""

    def attach(self, model: nn.Module, seeds: SeedTree, noise_mode: str = "exact") -> AttachedHardware:
        ...

    def to_dict(self) -> dict[str, Any]:
        ...
