"""Device names from configs and flags, checked once with a clear error naming what exists."""

from __future__ import annotations

import torch

from nora.errors import NoraError


def available_devices() -> list[str]:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` is the CPU; ``cuda`` / ``cuda:N`` / ``mps`` must exist on this machine."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise NoraError(f"unknown device {name!r}; this machine has: {', '.join(available_devices())}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise NoraError(f"device {name!r} does not exist; this machine has: {', '.join(available_devices())}")
        return device
    if device.type == "mps":
        if "mps" not in available_devices():
            raise NoraError(f"device {name!r} does not exist; this machine has: {', '.join(available_devices())}")
        return device
    raise NoraError(f"unsupported device {name!r}; this machine has: {', '.join(available_devices())}")


def model_device(model: torch.nn.Module) -> torch.device:
    """The one device a model's parameters and buffers live on (an error for mixed devices)."""
    devices = {t.device for t in [*model.parameters(), *model.buffers()]}
    if len(devices) > 1:
        raise NoraError(f"the model's tensors are on several devices ({', '.join(sorted(map(str, devices)))}); "
                        "move it to one with model.to(device)")
    return devices.pop() if devices else torch.device("cpu")
