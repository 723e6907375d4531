"""Name -> builder registry, so configs, the CLI and checkpoints can refer to a model by a string.

A builder is a function whose parameters all have defaults and include ``input_shape`` and
``num_classes``; its signature is the single source of truth for the accepted options, their defaults
and the error messages. ``build_model`` stamps every model with ``arch`` and ``arch_kwargs`` (all
arguments, defaults resolved, JSON-safe) so that ``build_model(model.arch, **model.arch_kwargs)``
rebuilds the same architecture from a checkpoint even if a default changes later.
"""

from __future__ import annotations

import difflib
import inspect
import json
from typing import Any, Callable

from torch import nn

from nora.errors import NoraError
from nora.models.common import as_shape, positive_int

Builder = Callable[..., nn.Module]

_REQUIRED = ("input_shape", "num_classes")
_BUILDERS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder under ``name``; the signature is checked once, here."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise NoraError(f"a model named {name!r} is already registered")
        params = inspect.signature(builder).parameters.values()
        missing = [p for p in _REQUIRED if p not in {q.name for q in params}]
        no_default = [p.name for p in params if p.default is inspect.Parameter.empty]
        if missing or no_default:
            raise NoraError(
                f"builder for {name!r} needs parameters {', '.join(_REQUIRED)} and defaults for all "
                f"parameters (missing: {', '.join(missing) or '-'}; no default: {', '.join(no_default) or '-'})"
            )
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def model_defaults(name: str) -> dict[str, Any]:
    """Every parameter of the builder with its default (``input_shape`` and ``num_classes`` included)."""
    return {p.name: p.default for p in inspect.signature(_lookup(name)).parameters.values()}


def build_model(
    name: str,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; ``None`` for ``input_shape``/``num_classes`` means the model's default."""
    builder = _lookup(name)
    signature = inspect.signature(builder)
    options = [p for p in signature.parameters if p not in _REQUIRED]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise NoraError(
            f"model {name!r} has no option {unknown[0]!r}; accepted: "
            f"{', '.join(list(_REQUIRED) + options)}"
        )
    defaults = model_defaults(name)
    shape = as_shape(name, defaults["input_shape"] if input_shape is None else input_shape)
    classes = defaults["num_classes"] if num_classes is None else num_classes
    if classes is not None:
        classes = positive_int(name, "num_classes", classes)
    bound = signature.bind(input_shape=shape, num_classes=classes, **kwargs)
    bound.apply_defaults()
    model = builder(**bound.arguments)  # validates the values first, with the most specific messages
    arch_kwargs = {key: _json_safe(name, key, value) for key, value in bound.arguments.items()}
    model.arch = name
    model.arch_kwargs = arch_kwargs
    model.input_shape = shape
    model.num_classes = classes
    return model


def _lookup(name: str) -> Builder:
    if not isinstance(name, str) or name not in _BUILDERS:
        close = difflib.get_close_matches(str(name), _BUILDERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NoraError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
    return _BUILDERS[name]


def _json_safe(name: str, option: str, value: Any) -> Any:
    # Tuples become lists (what a JSON round trip yields anyway); other non-JSON values are refused,
    # since a checkpoint could not record them.
    if isinstance(value, (tuple, list)):
        value = [_json_safe(name, option, v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NoraError(f"model {name!r}: option {option} must be a plain JSON value, got {value!r}") from exc
    return value
