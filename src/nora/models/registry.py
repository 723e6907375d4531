"""Name -> builder registry, so configs, the CLI and checkpoints can refer to a model by a string.

A builder is a function whose parameters all have defaults and include ``input_shape`` and
``num_classes``; its signature is the single source of truth for the accepted options, their defaults
and the error messages. ``build_model`` stamps every model with ``arch`` and ``arch_kwargs`` (all
arguments, defaults resolved, JSON-safe) so that ``build_model(model.arch, **model.arch_kwargs)``
rebuilds the same architecture from a checkpoint even if a default changes later.

A user's own model is named ``package.module:Factory`` (importable, or found from the working
folder) or ``path/to/file.py:Factory``: any callable returning an ``nn.Module``. It gets
``input_shape``/``num_classes`` only if it has parameters of those names; a dry run on zeros then
checks that it takes that input and yields one logit per class, so a mismatch fails here with both
shapes named instead of deep inside the first training step. It is stamped like a zoo model (a file
path made absolute), so checkpoints rebuild it. Loading it runs the user's file, as a config would.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
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


def is_factory_spec(name: Any) -> bool:
    """True for ``module:Factory`` / ``file.py:Factory`` names (a user's own model)."""
    return isinstance(name, str) and ":" in name.strip()


def model_defaults(name: str) -> dict[str, Any]:
    """Every parameter of the builder with its default (``input_shape`` and ``num_classes`` included).

    For a user factory, parameters without a default map to ``inspect.Parameter.empty``.
    """
    if is_factory_spec(name):
        _, factory = resolve_factory(name)
        out = {p: None for p in _REQUIRED}
        out.update({p.name: p.default for p in _parameters(name, factory)
                    if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)})
        return out
    return {p.name: p.default for p in inspect.signature(_lookup(name)).parameters.values()}


def build_model(
    name: str,
    input_shape: tuple[int, ...] | list[int] | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model or a user factory; ``None`` for ``input_shape``/``num_classes`` means the default."""
    if is_factory_spec(name):
        return _build_from_factory(name, input_shape, num_classes, kwargs)
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
    if isinstance(name, str) and (name.endswith(".py") or "/" in name):
        raise NoraError(f"model {name!r}: name the factory in the file: {name}:Factory "
                        "(write a user model as package.module:Factory or path/to/file.py:Factory)")
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


# ------------------------------------------------------------------------------ user factories
def resolve_factory(spec: str) -> tuple[str, Callable[..., Any]]:
    """(the name to stamp, the callable) for ``module:Attr`` or ``file.py:Attr``."""
    target, _, attr = spec.strip().rpartition(":")
    if not target or not attr:
        raise NoraError(f"model {spec!r}: write a user model as package.module:Factory or path/to/file.py:Factory")
    if target.endswith(".py") or "/" in target or os.sep in target:
        path = Path(target).expanduser().resolve()
        module = _load_file(spec, path)
        stamped = f"{path}:{attr}"
    else:
        module = _import_module(spec, target)
        stamped = f"{target}:{attr}"
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise NoraError(f"model {spec!r}: {target} has no attribute {attr!r}{hint}")
        found = getattr(found, part)
    if not callable(found):
        raise NoraError(f"model {spec!r}: {attr} is not a class or function (it is of type {type(found).__name__})")
    return stamped, found


def _load_file(spec: str, path: Path):
    if not path.is_file():
        raise NoraError(f"model {spec!r}: file {path} not found")
    stat = path.stat()
    digest = hashlib.sha256(f"{path}\0{stat.st_mtime_ns}\0{stat.st_size}".encode()).hexdigest()[:12]
    name = f"nora_user_model_{path.stem.replace('-', '_').replace('.', '_')}_{digest}"
    if name in sys.modules:  # the same, unchanged file was loaded before
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise NoraError(f"model {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling inside the file look themselves up here
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise NoraError(f"model {spec!r}: loading {path} failed: {_reason(exc)}") from exc
    return module


def _import_module(spec: str, target: str):
    """Import ``target``; a module beside the working folder is found as it is with ``python -m``."""
    cwd = os.getcwd()
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if not _is_missing(exc, target) or cwd in sys.path or "" in sys.path:
            raise _import_error(spec, target, exc) from exc
    except Exception as exc:
        raise _import_error(spec, target, exc) from exc
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except Exception as exc:
        raise _import_error(spec, target, exc) from exc
    finally:
        sys.path.remove(cwd)


def _is_missing(exc: ModuleNotFoundError, target: str) -> bool:
    """The module (or a package above it) itself is missing, not something it imports."""
    return exc.name is not None and (target == exc.name or target.startswith(exc.name + "."))


def _import_error(spec: str, target: str, exc: Exception) -> NoraError:
    if isinstance(exc, ModuleNotFoundError) and _is_missing(exc, target):
        return NoraError(f"model {spec!r}: no module named {target!r} (install it, add its folder to "
                         "PYTHONPATH, or give a file: path/to/file.py:Factory)")
    return NoraError(f"model {spec!r}: importing {target} failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _parameters(spec: str, factory: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        raise NoraError(f"model {spec!r}: cannot read the parameters of {factory!r}") from None


def _build_from_factory(spec: str, input_shape, num_classes, kwargs: dict[str, Any]) -> nn.Module:
    stamped, factory = resolve_factory(spec)
    params = _parameters(spec, factory)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    for key in _REQUIRED:
        if key in kwargs:
            raise NoraError(f"model {spec!r}: give {key} as its own argument, not among the options")
    unknown = sorted(set(kwargs) - set(named)) if not takes_any else []
    if unknown:
        accepted = ", ".join(n for n in named if n not in _REQUIRED) or "none"
        raise NoraError(f"model {spec!r} has no option {unknown[0]!r}; accepted: {accepted}")
    if input_shape is None and "input_shape" in named and named["input_shape"].default is not inspect.Parameter.empty:
        input_shape = named["input_shape"].default
    shape = None if input_shape is None else as_shape(spec, input_shape)
    if num_classes is None and "num_classes" in named and named["num_classes"].default is not inspect.Parameter.empty:
        num_classes = named["num_classes"].default
    classes = None if num_classes is None else positive_int(spec, "num_classes", num_classes)
    call = dict(kwargs)
    for key, value in (("input_shape", shape), ("num_classes", classes)):
        if key in named:
            if value is None:
                raise NoraError(f"model {spec!r} needs {key} (a parameter of the factory with no value given): "
                                "build it for a data set, or give the parameter a default")
            call[key] = value
    missing = [n for n, p in named.items() if n not in call and p.default is inspect.Parameter.empty]
    if missing:
        raise NoraError(f"model {spec!r} needs option {missing[0]!r} (it has no default); set it in model.kwargs")
    positional_only = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is inspect.Parameter.empty]
    if positional_only:
        raise NoraError(f"model {spec!r}: positional-only parameter {positional_only[0]!r} cannot be set by name")
    options = {n: p.default for n, p in named.items() if n not in _REQUIRED and p.default is not inspect.Parameter.empty}
    options.update(kwargs)
    arch_kwargs = {key: _json_safe(spec, key, value) for key, value in options.items()}
    try:
        model = factory(**call)
    except NoraError:
        raise
    except Exception as exc:
        raise NoraError(f"model {spec!r}: building it failed: {_reason(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise NoraError(f"model {spec!r} returned an object of type {type(model).__name__}, not a torch.nn.Module")
    if shape is None and getattr(model, "input_shape", None) is not None:
        shape = as_shape(spec, list(model.input_shape))
    if shape is not None:
        classes = _dry_run(spec, model, shape, classes)
    for key, value in (("arch", stamped), ("arch_kwargs", {"input_shape": None if shape is None else list(shape),
                                                             "num_classes": classes, **arch_kwargs}),
                       ("input_shape", shape), ("num_classes", classes)):
        try:
            setattr(model, key, value)
        except AttributeError:
            raise NoraError(f"model {spec!r}: cannot record {key} on the model (a read-only attribute of that "
                            "name is in the way)") from None
    return model


def _dry_run(spec: str, model: nn.Module, shape: tuple[int, ...], classes: int | None) -> int | None:
    """Run two zero samples through ``model``; returns the number of logits (None if not [N, K])."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters(), torch.zeros(0)).device  # a factory may build on its own device
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device))
    except Exception as exc:
        raise NoraError(f"model {spec!r} does not take inputs of shape {shape} (per sample): {_reason(exc)}") from exc
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got is not None and len(got) == 2 and got[0] == 2:
        if classes is not None and got[1] != classes:
            raise NoraError(f"model {spec!r} gives {got[1]} outputs per sample for inputs of shape {shape}, "
                            f"but the data has {classes} classes")
        return got[1]
    if classes is not None:
        what = f"outputs of shape {got[1:]}" if got is not None else f"a value of type {type(out).__name__}"
        raise NoraError(f"model {spec!r} gives {what} per sample, not {classes} logits (one per class)")
    return None
