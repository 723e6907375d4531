"""Import Brevitas on first use, so the core package works (and starts fast) without it.

Brevitas is a dependency of the ``export`` extra only. On import it warns about an optional
accelerated kernel package and about its own deprecated ``brevitas.fx``, neither of which concerns
nora's use of it; those two warnings are silenced here.
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
            warnings.filterwarnings("ignore", message=r".*brevitas\.fx is deprecated.*", category=DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise NoraError(
            f"{owner}: the '{package}' package is not installed ({exc.name or package} missing); install nora[export]"
        ) from None
