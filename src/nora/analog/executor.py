"""The shipped localhost hardware executor: ``python -m nora.analog.executor --backend JSON --seed N``.

It reads ``linear`` requests (frames of ``nora.analog.hil``) on stdin and answers each with the
software model of ``--backend`` (an ordered MAC or a tile, one chip per ``--seed``) on stdout; errors
in a request are answered as ``{"error": ...}`` frames, and the process ends at end of input.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from torch import nn

from nora.analog.config import OrderedMACConfig, hardware_from_dict
from nora.analog.hil import FrameReader, encode
from nora.errors import NoraError
from nora.seeds import SeedTree


class _Chip:
    """One simulated chip: a software model attached to a one-layer stand-in per requested layer."""

    def __init__(self, backend: dict, seed: int):
        self.config = hardware_from_dict(backend)
        self.seeds = SeedTree(seed)
        self.layers: dict[str, tuple[nn.Linear, object]] = {}

    def linear(self, name: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
            raise NoraError(f"shapes x {x.shape} and weight {weight.shape} do not multiply")
        entry = self.layers.get(name)
        if entry is None or entry[0].weight.shape != weight.shape or (entry[0].bias is None) != (bias is None):
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).eval()
            entry = (layer, self.config.attach(nn.Sequential(layer), self.seeds.child("layer", name)))
            self.layers[name] = entry
        layer, _ = entry
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.array(weight)))
            if bias is not None:
                layer.bias.copy_(torch.from_numpy(np.array(bias)))
            return layer(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nora.analog.executor")
    parser.add_argument("--backend", default=json.dumps({"kind": OrderedMACConfig.kind, "noise": 0.0}))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        chip = _Chip(json.loads(args.backend), args.seed)
    except (NoraError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reader = FrameReader(sys.stdin.buffer)
    out = sys.stdout.buffer
    while True:
        try:
            header, arrays = reader.read()
        except EOFError:
            return 0
        try:
            if header.get("op") != "linear":
                raise NoraError(f"unknown op {header.get('op')!r}")
            y = chip.linear(str(header.get("layer")), arrays["x"], arrays["weight"], arrays.get("bias"))
            frame = encode({"op": "result"}, {"y": y})
        except (NoraError, KeyError) as exc:
            frame = encode({"error": str(exc)}, {})
        out.write(frame)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
