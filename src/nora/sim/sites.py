"""Noise sites: every call of a computing module in a forward pass, numbered in call order.

Sites are found by running one forward pass with recording hooks, so any ``nn.Module`` works,
including modules called more than once per pass (a ResNet block's ReLU): each *call* is a site.
Site 0 is the network input. Functional calls (``F.relu`` inside ``forward``) are not modules and
therefore not sites.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from nora.errors import NoraError

INPUT_SITE = "input"

#: Module categories a site policy chooses from, each with the torch types it covers.
CATEGORY_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear, nn.Bilinear),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
    "norm": (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
             nn.LocalResponseNorm, nn.RMSNorm),
    "activation": (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                   nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign),
    "pool": (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
             nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd),
    "recurrent": (nn.RNNBase, nn.RNNCellBase),
}
CATEGORIES = ("input", *CATEGORY_TYPES)
_BATCH_NORM = (nn.modules.batchnorm._BatchNorm,)


@dataclasses.dataclass(frozen=True)
class SiteHints:
    """What a model says about its own sites, stored on the instance as ``model.nora_site_hints``.

    ``types`` adds module types under a category (a quantised activation of a QAT library is an
    "activation"); ``exclude`` names modules that are never sites (an input quantiser belongs to the
    input, so a QAT model keeps its float twin's site indices). Instance data, no global registry.
    """

    types: tuple[tuple[str, tuple[type[nn.Module], ...]], ...] = ()
    exclude: tuple[str, ...] = ()


def _resolve_type(entry: type[nn.Module] | str) -> type[nn.Module]:
    """A module class from a class, a torch.nn name ("ReLU") or an import path ("pkg.mod:Class")."""
    if isinstance(entry, type) and issubclass(entry, nn.Module):
        return entry
    text = str(entry).strip()
    cls: Any = None
    if ":" in text:
        module_name, _, attr = text.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr, None)
        except ImportError as exc:
            raise NoraError(f"site type {text!r}: cannot import {module_name} ({exc})") from None
    else:
        name = text.rsplit(".", 1)[-1]
        cls = getattr(nn, name, None)
        if cls is None:
            known = sorted({t.__name__ for types in CATEGORY_TYPES.values() for t in types if not t.__name__.startswith("_")})
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) or difflib.get_close_matches(
                name.lower(), [k.lower() for k in known], n=1, cutoff=0.6)
            hint = f"; did you mean {next(k for k in known if k.lower() == close[0].lower())!r}?" if close else ""
            raise NoraError(f"unknown module type {entry!r} for noise sites (expected a torch.nn class name or "
                            f"'package.module:Class'){hint}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise NoraError(f"site type {entry!r} is not a torch.nn.Module class")
    return cls


@dataclasses.dataclass(frozen=True)
class SitePolicy:
    """Which module calls are sites: data, built the same from YAML, flags and Python.

    ``include`` lists categories (input, linear, conv, norm, activation, pool, recurrent);
    ``exclude`` removes categories or module types by name; ``batch_norm=False`` drops BatchNorm
    only; ``extra`` adds user module types (classes or "pkg.mod:Class"); ``types``, when given,
    replaces the categories by an explicit list of module types (the input stays a category).
    """

    include: tuple[str, ...] = CATEGORIES
    exclude: tuple[str, ...] = ()
    batch_norm: bool = True
    extra: tuple[Any, ...] = ()
    types: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude", "extra"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.types is not None:
            object.__setattr__(self, "types", tuple(self.types))
        unknown = [c for c in self.include if c not in CATEGORIES]
        if unknown:
            raise NoraError(f"unknown site categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                            f"choose from {', '.join(CATEGORIES)}")
        for entry in (*self.extra, *(self.types or ())):
            _resolve_type(entry)
        for entry in self.exclude:
            if entry not in CATEGORIES:
                _resolve_type(entry)

    @property
    def include_input(self) -> bool:
        return "input" in self.include and "input" not in self.exclude

    def module_types(self, hints: SiteHints | None = None) -> tuple[type[nn.Module], ...]:
        hinted = dict(hints.types) if hints is not None else {}
        if self.types is not None:
            chosen = [_resolve_type(t) for t in self.types]
        else:
            chosen = []
            for category in self.include:
                if category in CATEGORY_TYPES and category not in self.exclude:
                    chosen += [*CATEGORY_TYPES[category], *hinted.get(category, ())]
        chosen += [_resolve_type(t) for t in self.extra]
        dropped = tuple(_resolve_type(e) for e in self.exclude if e not in CATEGORIES)
        if not self.batch_norm:
            dropped += _BATCH_NORM
        return tuple(t for t in dict.fromkeys(chosen) if not (dropped and issubclass(t, dropped)))

    def to_dict(self) -> dict[str, Any]:
        def name(t: Any) -> str:
            return t if isinstance(t, str) else f"{t.__module__}:{t.__qualname__}"

        return {"include": list(self.include), "exclude": list(self.exclude), "batch_norm": self.batch_norm,
                "extra": [name(t) for t in self.extra], "types": None if self.types is None else [name(t) for t in self.types]}


def policy_from(site_types: Iterable[Any] | None = None, include_input: bool = True) -> SitePolicy:
    """The policy for an explicit list of module types (the older ``site_types`` form)."""
    include = CATEGORIES if include_input else tuple(c for c in CATEGORIES if c != "input")
    return SitePolicy(include=include, types=None if site_types is None else tuple(site_types))


@dataclasses.dataclass(frozen=True)
class Site:
    index: int
    name: str
    module_name: str
    module_type: str
    call: int
    output_shape: tuple[int, ...]
    #: Shapes of further tensors in a tuple/list output (a recurrent layer's hidden state).
    extra_shapes: tuple[tuple[int, ...], ...] = ()

    @property
    def numel(self) -> int:
        """Elements per sample at this site."""
        return sum(math.prod(shape) for shape in (self.output_shape, *self.extra_shapes))

    def to_dict(self) -> dict:
        out = {**dataclasses.asdict(self), "output_shape": list(self.output_shape)}
        out["extra_shapes"] = [list(s) for s in self.extra_shapes]
        return out


def site_tensors(output: Any) -> list[torch.Tensor] | None:
    """The floating-point tensors of a module output that take noise (None: the output takes none).

    In a tuple or list (a recurrent layer's output and hidden state) every float tensor whose first
    dimension is the batch of the first one takes noise; a hidden state laid out layers-first does not.
    """
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0]
        if not tensors:
            return None
        return [t for t in tensors if t.shape[0] == tensors[0].shape[0]]
    return None


def eligible_modules(model: nn.Module, policy: SitePolicy | None = None) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs are sites, outermost first: an eligible module's own children are
    never sites, so a quantised activation that wraps an ``nn.ReLU`` is one site, after quantisation."""
    policy = policy or SitePolicy()
    hints = getattr(model, "nora_site_hints", None)
    types = policy.module_types(hints)
    excluded = set(hints.exclude) if hints is not None else set()
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if path in excluded:
                continue
            if isinstance(child, types):
                found.append((path, child))
            else:
                visit(path, child)

    if isinstance(model, types):
        return [("", model)]
    visit("", model)
    return found


def discover_sites(model: nn.Module, example_input: torch.Tensor, policy: SitePolicy | None = None) -> list[Site]:
    """Run one clean forward pass and list every site in call order."""
    policy = policy or SitePolicy()
    modules = eligible_modules(model, policy)
    records: list[tuple[str, str, list[tuple[int, ...]]]] = []
    refused: list[str] = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs, output):
            tensors = site_tensors(output)
            if tensors is None:
                refused.append(f"{name or type(model).__name__} ({type(module).__name__} returns "
                               f"{type(output).__name__})")
                return
            records.append((name, type(module).__name__, [tuple(t.shape[1:]) for t in tensors]))
        return hook

    handles = [m.register_forward_hook(make_hook(name)) for name, m in modules]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    except NoraError:
        raise
    except Exception as exc:
        raise NoraError(
            f"the model could not run on an input of shape {tuple(example_input.shape)}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if refused and policy.types is not None:
        raise NoraError(f"these modules were asked for as sites but their outputs hold no floating-point tensor to "
                        f"put noise on: {', '.join(dict.fromkeys(refused))}")

    calls_per_module = Counter(name for name, _, _ in records)
    seen: Counter[str] = Counter()
    sites: list[Site] = []
    if policy.include_input:
        sites.append(Site(0, INPUT_SITE, "", "Input", 0, tuple(example_input.shape[1:])))
    for module_name, module_type, shapes in records:
        call = seen[module_name]
        seen[module_name] += 1
        label = module_name or type(model).__name__
        name = f"{label}#{call}" if calls_per_module[module_name] > 1 else label
        sites.append(Site(len(sites), name, module_name, module_type, call, shapes[0], tuple(shapes[1:])))
    return sites


_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


def select_sites(sites: Sequence[Site], selection) -> list[int]:
    """Indices chosen by ``selection``: None/"all", an index, "3-7", a name, a glob, a type name,
    "type:ReLU", or a list of these. Unknown entries raise a NoraError naming the valid choices."""
    if selection is None or (isinstance(selection, str) and selection.strip().lower() == "all"):
        return [s.index for s in sites]
    entries = selection if isinstance(selection, (list, tuple, set)) else [selection]
    chosen: list[int] = []
    for entry in entries:
        matched = _match_one(sites, entry)
        chosen.extend(i for i in matched if i not in chosen)
    return sorted(chosen)


def _match_one(sites: Sequence[Site], entry) -> list[int]:
    n = len(sites)
    if isinstance(entry, bool):
        raise NoraError(f"site selection {entry!r} is not an index, name, glob or type")
    if isinstance(entry, int) or (isinstance(entry, str) and entry.strip().lstrip("-").isdigit()):
        index = int(entry)
        if not 0 <= index < n:
            raise NoraError(f"site index {index} out of range: the model has {n} sites (0..{n - 1})")
        return [index]
    if not isinstance(entry, str):
        raise NoraError(f"site selection {entry!r} is not an index, name, glob or type")
    text = entry.strip()
    ranged = _RANGE.match(text)
    if ranged:
        lo, hi = int(ranged.group(1)), int(ranged.group(2))
        if lo > hi:
            raise NoraError(f"site range {text!r} is reversed: write it as {hi}-{lo}")
        if hi >= n:
            raise NoraError(f"site range {text!r} is not inside 0..{n - 1}")
        return list(range(lo, hi + 1))
    if text.startswith("type:"):
        wanted = text[5:]
        hits = [s.index for s in sites if s.module_type == wanted]
        if not hits:
            types = sorted({s.module_type for s in sites})
            raise NoraError(f"no site of type {wanted!r}; the model's site types are: {', '.join(types)}")
        return hits
    hits = [s.index for s in sites if s.name == text or s.module_name == text]
    if not hits and any(c in text for c in "*?["):
        hits = [s.index for s in sites if fnmatch.fnmatchcase(s.name, text)]
    if not hits:
        hits = [s.index for s in sites if s.module_type == text]
    if not hits:
        names = ", ".join(s.name for s in sites[:12]) + (", ..." if n > 12 else "")
        raise NoraError(f"unknown site {text!r}{_closest_site(sites, text)}; sites are: {names} (see `nora sites`)")
    return hits


def _closest_site(sites: Sequence[Site], text: str) -> str:
    """A "did you mean" for a selection off by case or a typo ("relu" -> "ReLU"), or ''."""
    candidates = sorted({s.module_type for s in sites} | {s.name for s in sites})
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(text.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
