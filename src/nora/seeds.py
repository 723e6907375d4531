"""One seed tree for every stochastic part of nora.

A run has one root seed. Every consumer of randomness asks the tree for its own child by purpose and
index (``tree.child("train", "activation", epoch)``, ``tree.child("eval", "repeat", r)``) and gets an
independent stream: children are numpy ``SeedSequence`` spawn keys, so two different paths never
share a stream, whatever the root (the old ``seed + 1`` / ``seed * 7919 + epoch`` arithmetic made
streams collide). nora never reads or sets torch's global generator: every draw goes through a
``torch.Generator`` made here.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from typing import Iterator, Union

import numpy as np
import torch

from nora.errors import NoraError

Key = Union[str, int]
_STRING_BASE = 1 << 32
_MASK64 = (1 << 64) - 1


def _encode(key: Key) -> int:
    """Spawn-key entry: integers as themselves (< 2**32), names by CRC-32 above that range."""
    if isinstance(key, bool):
        raise NoraError(f"a seed-tree key must be a name or an integer >= 0, got {key!r}")
    if isinstance(key, int):
        if not 0 <= key < _STRING_BASE:
            raise NoraError(f"a seed-tree index must lie in 0..2**32-1, got {key}")
        return key
    if isinstance(key, str) and key:
        return _STRING_BASE + zlib.crc32(key.encode("utf-8"))
    raise NoraError(f"a seed-tree key must be a non-empty name or an integer >= 0, got {key!r}")


def check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise NoraError(f"{name} must be an integer >= 0, got {seed!r}")
    return int(seed)


class SeedTree:
    """A node of the tree: a root seed and the path of keys below it."""

    __slots__ = ("root", "path")

    def __init__(self, root: int | None = None, path: tuple[Key, ...] = ()):
        # No root: fresh OS entropy, never torch's global generator.
        self.root = int(np.random.SeedSequence().entropy) if root is None else check_seed(root)
        self.path = tuple(path)
        for key in self.path:
            _encode(key)

    @classmethod
    def of(cls, seed: "SeedTree | int | None") -> "SeedTree":
        return seed if isinstance(seed, SeedTree) else cls(seed)

    def child(self, *keys: Key) -> "SeedTree":
        return SeedTree(self.root, self.path + keys)

    def sequence(self) -> np.random.SeedSequence:
        return np.random.SeedSequence(self.root, spawn_key=tuple(_encode(k) for k in self.path))

    def words(self, count: int) -> tuple[int, ...]:
        """``count`` 32-bit words of this node's seed material (a counter-based generator's key)."""
        return tuple(int(w) for w in self.sequence().generate_state(count, np.uint32))

    def seed(self) -> int:
        """A 63-bit integer seed for this node (for torch generators and external libraries)."""
        low, high = self.words(2)
        return (high << 32 | low) & ((1 << 63) - 1)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=torch.device(device)).manual_seed(self.seed())

    def numpy(self) -> np.random.Generator:
        return np.random.default_rng(self.sequence())

    def counter_generator(self, index: int) -> torch.Generator:
        """A CPU generator for numbered draw ``index`` under this node, for draws made at every
        training step: the node's seed (derived once and cached) mixed with the index by splitmix64.
        A child node per draw costs ~40 us of seed-sequence hashing, a visible share of a small step."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise NoraError(f"a draw index must be an integer >= 0, got {index!r}")
        return torch.Generator().manual_seed(_splitmix64(_node_seed(self.root, self.path) + index) >> 1)

    def describe(self) -> str:
        return "/".join([str(self.root), *map(str, self.path)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeedTree) and (self.root, self.path) == (other.root, other.path)

    def __hash__(self) -> int:
        return hash((self.root, self.path))

    def __repr__(self) -> str:
        return f"SeedTree({self.describe()})"


@functools.lru_cache(maxsize=1024)
def _node_seed(root: int, path: tuple[Key, ...]) -> int:
    return SeedTree(root, path).seed()


def _splitmix64(value: int) -> int:
    """Steele, Lea and Flood's 64-bit finaliser: nearby inputs give unrelated outputs."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@contextlib.contextmanager
def torch_global_seeded(seed: "SeedTree | int", devices: list | tuple = ()) -> Iterator[None]:
    """torch's global generator seeded from ``seed`` for the block and restored afterwards: for the
    draws nora cannot give a generator to (module init, dropout)."""
    with torch.random.fork_rng(devices=list(devices)):
        torch.manual_seed(SeedTree.of(seed).seed())
        yield
