"""Fast, seeded source of standard-normal numbers.

Profiling shows that drawing random numbers is nearly all of the cost of noise injection: torch's
CPU ``normal_`` runs one Mersenne-Twister stream on a single core. ``NoiseSource`` splits large draws
into fixed chunks, each with its own generator, and fills them on a small thread pool (torch releases
the GIL inside ``normal_``). The chunking depends only on the number of elements, never on the
thread count, so a seed gives the same numbers whatever the machine's parallelism.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

_CHUNKS = 2
_PARALLEL_MIN = 1 << 16
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_CHUNKS, thread_name_prefix="nora-rng")
    return _POOL


def fresh_seed() -> int:
    """A seed drawn from torch's global generator, so ``torch.manual_seed`` governs nora too."""
    return int(torch.randint(0, 2**62, (1,)).item())


class NoiseSource:
    """Deterministic standard-normal draws for one device."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu"):
        self.seed = fresh_seed() if seed is None else int(seed)
        self.device = torch.device(device)
        self._generators = [torch.Generator(device=self.device) for _ in range(_CHUNKS)]
        for offset, generator in enumerate(self._generators):
            generator.manual_seed((self.seed * 1_000_003 + offset) % (2**63))

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill a contiguous tensor with N(0, 1) draws in place."""
        flat = out.view(-1)
        n = flat.numel()
        if n < _PARALLEL_MIN:
            return out.normal_(generator=self._generators[0])
        step = -(-n // _CHUNKS)
        parts = [flat[i * step : (i + 1) * step] for i in range(_CHUNKS)]
        if self.device.type == "cpu" and torch.get_num_threads() >= 2:
            futures = [
                _pool().submit(part.normal_, generator=gen) for part, gen in zip(parts, self._generators)
            ]
            for future in futures:
                future.result()
        else:
            for part, gen in zip(parts, self._generators):
                part.normal_(generator=gen)
        return out

    def standard_normal(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.fill_(torch.empty(shape, dtype=dtype, device=self.device))

    def state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self._generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        for generator, state in zip(self._generators, states):
            generator.set_state(state)
