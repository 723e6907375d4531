"""Hardware in the loop: a layer's forward runs on an external executor, its backward in software.

An executor is anything with ``run(layer, x, weight, bias) -> y`` on 2-D float arrays (a device
driver, a recorded trace, another process). ``ProcessExecutor`` talks to a child process over its
stdin/stdout pipes with length-prefixed frames (a JSON header and raw little-endian arrays; nothing is
ever unpickled), with a timeout on every reply; a dead, hung or misbehaving executor is one
``NoraError`` line. ``python -m nora.analog.executor`` is the shipped localhost executor: it runs a
software model (ordered MAC or tile) on the arrays it receives.

Frame: 4-byte big-endian header length, the UTF-8 JSON header ``{"op": ..., "arrays": [{"name",
"dtype", "shape"}...], ...}``, then each array's bytes in the order listed.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch

from nora.analog.config import _layers, _positive, hardware_from_dict
from nora.analog.layers import Attachment, MappedLayer, from_rows, rows_of, straight_through, weight_matrix
from nora.errors import NoraError

_DTYPES = {"float32": np.float32, "float64": np.float64}
_MAX_HEADER = 1 << 20


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    specs, blobs = [], []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32 if arr.dtype != np.float64 else np.float64)
        specs.append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)})
        blobs.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    head = json.dumps({**header, "arrays": specs}).encode()
    return struct.pack(">I", len(head)) + head + b"".join(blobs)


class FrameReader:
    """Reads frames from a pipe with a deadline; ``read_exact`` raises ``TimeoutError`` / ``EOFError``."""

    def __init__(self, stream: BinaryIO):
        self.fd = stream.fileno()

    def read_exact(self, n: int, deadline: float | None) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([self.fd], [], [], wait)[0]:
                    raise TimeoutError
            chunk = os.read(self.fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read(self, deadline: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        (size,) = struct.unpack(">I", self.read_exact(4, deadline))
        if size > _MAX_HEADER:
            raise ValueError(f"frame header of {size} bytes")
        header = json.loads(self.read_exact(size, deadline).decode())
        arrays = {}
        for spec in header.pop("arrays", []):
            dtype = _DTYPES.get(spec.get("dtype"))
            shape = spec.get("shape")
            if dtype is None or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise ValueError(f"bad array description {spec!r}")
            count = int(np.prod(shape)) if shape else 1
            raw = self.read_exact(count * np.dtype(dtype).itemsize, deadline)
            arrays[spec["name"]] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        return header, arrays


class ProcessExecutor:
    """An executor in a child process (``command``), one request at a time, ``timeout`` seconds per reply."""

    def __init__(self, command: list[str], timeout: float = 30.0):
        self.command = list(command)
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr)
        except OSError as exc:
            raise NoraError(f"cannot start the hardware executor {self.command[0]!r}: {exc.strerror or exc}") from None
        self.reader = FrameReader(self.proc.stdout)

    def _why_dead(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return f" ({lines[-1]})" if lines else ""

    def run(self, layer: str, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        arrays = {"x": x, "weight": weight} | ({"bias": bias} if bias is not None else {})
        try:
            self.proc.stdin.write(encode({"op": "linear", "layer": layer}, arrays))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            code = self.proc.poll()
            raise NoraError(f"the hardware executor exited (code {code}) before layer {layer!r}"
                            f"{self._why_dead()}") from None
        try:
            header, out = self.reader.read(time.monotonic() + self.timeout)
        except TimeoutError:
            self.close()
            raise NoraError(f"the hardware executor did not answer for layer {layer!r} within {self.timeout:g} s "
                            "(stopped it)") from None
        except EOFError:
            code = self.proc.wait(timeout=5)
            raise NoraError(f"the hardware executor died (exit code {code}) during layer {layer!r}"
                            f"{self._why_dead()}") from None
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            self.close()
            raise NoraError(f"the hardware executor sent a malformed reply for layer {layer!r}: {exc}") from None
        if "error" in header:
            raise NoraError(f"the hardware executor failed on layer {layer!r}: {header['error']}")
        y = out.get("y")
        expected = (x.shape[0], weight.shape[0])
        if y is None or tuple(y.shape) != expected:
            got = "no output" if y is None else f"shape {tuple(y.shape)}"
            raise NoraError(f"the hardware executor returned {got} for layer {layer!r}; expected {expected}")
        if not np.isfinite(y).all():
            raise NoraError(f"the hardware executor returned non-finite values for layer {layer!r}")
        return y

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=1)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream and not stream.closed:
                stream.close()
        self._stderr.close()


def local_command(backend: dict[str, Any], seed: int) -> list[str]:
    """The command line of the shipped localhost executor running software model ``backend``."""
    return [sys.executable, "-m", "nora.analog.executor", "--backend", json.dumps(backend), "--seed", str(seed)]


@dataclass(frozen=True)
class HILConfig:
    """Forward of the mapped layers on an executor process; ``command: null`` starts the shipped one.

    ``backend`` is the hardware dict the shipped executor simulates (default: the noise-free ordered MAC).
    """

    command: tuple[str, ...] | None = None
    backend: dict[str, Any] = field(default_factory=lambda: {"preset": "bss2", "noise": 0.0})
    timeout: float = 30.0
    layers: tuple[str, ...] | None = None
    preset: str | None = None
    kind: str = "hil"

    def __post_init__(self):
        if self.command is not None:
            if not isinstance(self.command, (list, tuple)) or not self.command or not all(
                    isinstance(c, str) for c in self.command):
                raise NoraError("hil command must be null or a non-empty list of strings")
            object.__setattr__(self, "command", tuple(self.command))
        hardware_from_dict(self.backend)
        _positive(self.timeout, "timeout")
        object.__setattr__(self, "layers", _layers(self.layers))

    def attach(self, model, seeds, noise_mode: str = "exact") -> "AttachedHIL":
        """Delegate ``model``'s layers to the executor (which draws its own noise: ``noise_mode`` is checked only)."""
        return AttachedHIL(self, model, seeds, noise_mode=noise_mode)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hil", "command": None if self.command is None else list(self.command),
                "backend": dict(self.backend), "timeout": self.timeout,
                "layers": None if self.layers is None else list(self.layers)}


class AttachedHIL(Attachment):
    """Layers whose forward is the executor's answer; reseed restarts the executor with the new seed."""

    kind = "hil"
    what = "hardware-in-the-loop executor"

    def __init__(self, config: HILConfig, model, seeds, executor=None, noise_mode: str = "exact"):
        self._own = executor is None
        self.executor = executor
        super().__init__(config, model, seeds, noise_mode)

    def reseed(self, seeds) -> None:
        super().reseed(seeds)
        if self._own:
            if self.executor is not None:
                self.executor.close()
            command = list(self.config.command) if self.config.command is not None else local_command(
                self.config.backend, self.seeds.seed())
            self.executor = ProcessExecutor(command, self.config.timeout)

    def compute(self, layer: MappedLayer, x: torch.Tensor, dim: int = -1, absmax=None) -> torch.Tensor:
        module = layer.module
        w = weight_matrix(module)
        bias = None if module.bias is None else module.bias.detach().cpu().numpy()
        rows = rows_of(x, dim).detach().cpu().numpy()
        y = self.executor.run(layer.name, rows, w.detach().cpu().numpy(), bias)
        y = torch.from_numpy(np.array(y, dtype=np.float32)).to(device=x.device, dtype=x.dtype)
        return straight_through(from_rows(y, x, dim), x, w, module.bias, dim)

    def detach(self):
        if self._own and self.executor is not None:
            self.executor.close()
            self.executor = None
        return super().detach()

    def describe(self) -> dict[str, Any]:
        return {"kind": "hil", "config": self.config.to_dict(), "layers": self.layer_names(),
                "seeds": self.seeds.describe()}
