"""Import Brevitas on first use, so the core package works (and starts fast) without it.

Brevitas is a dependency of the ``export`` extra only. It prints a warning about an optional
accelerated kernel package on import, which says nothing about nora's use of it; that one warning is
silenced here.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from nora.errors import NoraError


def require(module: str, owner: str) -> ModuleType:
    """Import ``module`` of the export extra or say which extra to install."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
            return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise NoraError(
            f"{owner} needs the '{package}' package, which is not installed ({exc.name or package} missing): "
            "install nora[export]"
        ) from None
