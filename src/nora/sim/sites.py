"""Noise sites: every call of a computing module in a forward pass, numbered in call order.

Sites are found by running one forward pass with recording hooks, so any ``nn.Module`` works,
including modules called more than once per pass (a ResNet block's ReLU): each *call* is a site.
Site 0 is the network input. Functional calls (``F.relu`` inside ``forward``) are not modules and
therefore not sites.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import nn

from nora.errors import NoraError

INPUT_SITE = "input"

#: Module types that get a site by default (methods.md section 1).
DEFAULT_SITE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Softplus,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_REGISTERED_SITE_TYPES: list[type[nn.Module]] = []


@dataclasses.dataclass(frozen=True)
class Site:
    index: int
    name: str
    module_name: str
    module_type: str
    call: int
    output_shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Elements per sample at this site."""
        n = 1
        for d in self.output_shape:
            n *= d
        return n

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "output_shape": list(self.output_shape)}


def resolve_site_types(types: Iterable[type[nn.Module] | str] | None) -> tuple[type[nn.Module], ...]:
    """Accept module classes or their names ("ReLU", "Conv2d", "torch.nn.Linear", or the name of
    a registered type such as "QuantReLU")."""
    if types is None:
        return default_site_types()
    resolved = []
    for entry in types:
        if isinstance(entry, type) and issubclass(entry, nn.Module):
            resolved.append(entry)
            continue
        name = str(entry).rsplit(".", 1)[-1]
        registered = {t.__name__: t for t in default_site_types()}
        cls = registered.get(name, getattr(nn, name, None))
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise NoraError(f"unknown module type {entry!r} for noise sites (expected a torch.nn class name)")
        resolved.append(cls)
    return tuple(resolved)


def register_site_type(cls: type[nn.Module]) -> type[nn.Module]:
    """Add a module type to the default placement (e.g. a quantised activation of a QAT library)."""
    if cls not in _REGISTERED_SITE_TYPES:
        _REGISTERED_SITE_TYPES.append(cls)
    return cls


def default_site_types() -> tuple[type[nn.Module], ...]:
    return (*DEFAULT_SITE_TYPES, *_REGISTERED_SITE_TYPES)


def eligible_modules(model: nn.Module, site_types: Sequence[type[nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs are sites, outermost first: an eligible module's own children are
    never sites, so a quantised activation that wraps an ``nn.ReLU`` is one site, after quantisation."""
    types = tuple(site_types)
    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, types):
                found.append((path, child))
            else:
                visit(path, child)

    if isinstance(model, types):
        return [("", model)]
    visit("", model)
    return found


def discover_sites(
    model: nn.Module,
    example_input: torch.Tensor,
    site_types: Sequence[type[nn.Module]] | None = None,
    include_input: bool = True,
) -> list[Site]:
    """Run one clean forward pass and list every site in call order."""
    site_types = resolve_site_types(site_types)
    modules = eligible_modules(model, site_types)
    records: list[tuple[str, str, tuple[int, ...]]] = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs, output):
            if isinstance(output, torch.Tensor):
                records.append((name, type(module).__name__, tuple(output.shape[1:])))
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

    calls_per_module = Counter(name for name, _, _ in records)
    seen: Counter[str] = Counter()
    sites: list[Site] = []
    if include_input:
        sites.append(Site(0, INPUT_SITE, "", "Input", 0, tuple(example_input.shape[1:])))
    for module_name, module_type, shape in records:
        call = seen[module_name]
        seen[module_name] += 1
        label = module_name or type(model).__name__
        name = f"{label}#{call}" if calls_per_module[module_name] > 1 else label
        sites.append(Site(len(sites), name, module_name, module_type, call, shape))
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
        if lo > hi or hi >= n:
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
        raise NoraError(f"unknown site {text!r}; sites are: {names} (see `nora sites`)")
    return hits
