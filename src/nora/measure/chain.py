"""Models as chains of steps, so an evaluation can start at a site from cached clean activations.

For models whose forward is a chain of module calls (``nn.Sequential`` and any module that only
feeds each child the previous child's output: mlp, lenet5, vgg11 and many user models) the model is
split at a site: the clean activation there is computed once per chunk and only the suffix runs on
noisy copies. Whether a model is a chain is *checked*, with hooks and a numerical comparison, not
assumed; sites inside modules that are not chains (a ResNet block) are not cut points.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from nora.sim.sites import Site, SitePolicy, eligible_modules

#: Clean activations of one site over the whole evaluation set are kept in memory up to this size.
DEFAULT_CACHE_BYTES = 1 << 30


@dataclasses.dataclass
class Chain:
    """A model as a list of steps whose composition equals its forward pass.

    ``cuts[site]`` is the number of steps whose output is that site's output (0 for the input).
    Sites missing from ``cuts`` lie inside a step that is not itself a chain.
    """

    steps: list[nn.Module]
    cuts: dict[int, int]

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for step in self.steps[start:stop]:
            x = step(x)
        return x


def _flatten(module: nn.Module, x: torch.Tensor, sites: set[int]) -> list[nn.Module] | None:
    """Steps equal to ``module(x)``, or None when its forward is not a chain of its children.

    ``sites`` holds the ids of the modules whose outputs are sites: they are never split further.
    """
    if id(module) in sites or not any(True for _ in module.children()):
        return [module]
    calls: list[tuple[nn.Module, int, torch.Tensor, Any]] = []
    pending: list[tuple[nn.Module, int, torch.Tensor]] = []

    def before(child, args, kwargs):
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
            pending.append((child, -1, torch.empty(0)))
        else:
            pending.append((child, id(args[0]), args[0].clone()))

    def after(child, _args, _kwargs, output):
        entry = pending.pop()
        calls.append((*entry, output))

    children = {id(c): c for c in module.children()}.values()
    handles = [c.register_forward_pre_hook(before, with_kwargs=True) for c in children]
    handles += [c.register_forward_hook(after, with_kwargs=True) for c in children]
    given = x.clone()
    try:
        output = module(given)
    except Exception:  # whatever stops this forward on its own also stops treating it as a chain
        return None
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        return None
    # Identity of the tensors proves the wiring: each child gets exactly the previous child's output.
    expected = id(given)
    for _child, source, _value, out in calls:
        if source != expected or not isinstance(out, torch.Tensor):
            return None
        expected = id(out)
    if id(output) != expected:
        return None
    steps: list[nn.Module] = []
    for child, _source, value, _out in calls:
        steps += _flatten(child, value, sites) or [child]
    return steps


def split_chain(model: nn.Module, example: torch.Tensor, sites: Sequence[Site],
                policy: SitePolicy | None = None) -> Chain | None:
    """The model as a chain of steps with each site's cut point, or None when it is not a chain.

    Checked on ``example``: the wiring with hooks, the result numerically against ``model(example)``.
    """
    policy = policy or SitePolicy()
    modules = eligible_modules(model, policy)
    eligible = {id(m) for _, m in modules}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            steps = _flatten(model, example, eligible)
            if steps is None:
                return None
            chain = Chain(steps, {})
            reference = model(example.clone())
            counted: list[int] = []
            handles = [m.register_forward_hook(lambda *_: counted.append(1)) for _, m in modules]
            try:
                x = example.clone()
                per_step = []
                for step in steps:
                    before = len(counted)
                    x = step(x)
                    per_step.append(len(counted) - before)
            finally:
                for handle in handles:
                    handle.remove()
            if not (isinstance(x, torch.Tensor) and x.shape == reference.shape
                    and torch.allclose(x, reference, rtol=1e-5, atol=1e-6)):
                return None
    finally:
        model.train(was_training)
    offset = 1 if sites and sites[0].module_type == "Input" else 0
    if offset:
        chain.cuts[0] = 0
    if sum(per_step) != len(sites) - offset:
        return None
    index = offset
    for position, (step, count) in enumerate(zip(steps, per_step)):
        if count == 1 and id(step) in eligible:
            chain.cuts[index] = position + 1
        index += count
    return chain


class ActivationCache:
    """Clean activations at a cut, chunk by chunk; kept in memory when they fit, else recomputed."""

    def __init__(self, chain: Chain, x: torch.Tensor, chunk_size: int, cache_bytes: int,
                 device: torch.device | None = None):
        self.chain, self.x, self.chunk_size, self.cache_bytes = chain, x, chunk_size, cache_bytes
        self.device = device or x.device
        self.cut = 0
        self.kept: list[torch.Tensor] | None = None

    def move_to(self, cut: int, numel: int) -> None:
        """Prepare the activations after ``cut`` steps (advancing the kept ones when possible)."""
        fits = len(self.x) * numel * self.x.element_size() <= self.cache_bytes
        with torch.no_grad():
            if fits and self.kept is not None and cut >= self.cut:
                self.kept = [self.chain.run(a, self.cut, cut) for a in self.kept]
            elif fits:
                self.kept = [self._compute(start, cut) for start in range(0, len(self.x), self.chunk_size)]
            else:
                self.kept = None
        self.cut = cut

    def _compute(self, start: int, cut: int) -> torch.Tensor:
        chunk = self.x[start:start + self.chunk_size]
        chunk = chunk.to(self.device) if chunk.device != self.device else chunk.clone()
        return self.chain.run(chunk, 0, cut)

    def chunks(self) -> Iterator[torch.Tensor]:
        if self.kept is not None:
            yield from self.kept
            return
        with torch.no_grad():
            for start in range(0, len(self.x), self.chunk_size):
                yield self._compute(start, self.cut)
