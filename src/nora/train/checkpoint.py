"""Checkpoints: weights in safetensors with a JSON description beside them, written atomically.

A run folder holds ``model.safetensors`` + ``model.json`` (architecture, data, epoch, metrics, the
sha256 of the weights file) and ``state.pt`` (optimizer/scheduler state for resuming, loaded with
``weights_only=True``). Nothing here unpickles arbitrary objects. The checksum matters because
safetensors parses damaged tensor bytes without complaint: a flipped block of weights would otherwise
load and evaluate silently at near-chance accuracy.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from nora.errors import NoraError
from nora.io import atomic_write_bytes, atomic_write_json

WEIGHTS = "model.safetensors"
META = "model.json"
STATE = "state.pt"
CHECKSUM = "weights_sha256"
_PARAMETRIZED = ".parametrizations.weight.original"


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with weight-noise parametrizations folded back to plain ``weight`` keys."""
    return {
        key.replace(_PARAMETRIZED, ".weight"): value.detach().contiguous().clone()
        for key, value in model.state_dict().items()
    }


def save_model(run_dir: str | Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    """Write weights, then their description with the weights' sha256 added; returns that description."""
    run_dir = Path(run_dir)
    data = st_save(plain_state_dict(model))
    meta = {**meta, CHECKSUM: hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(run_dir / WEIGHTS, data)
    atomic_write_json(run_dir / META, meta)
    return meta


def save_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(run_dir) / STATE, buffer.getvalue())


def load_state(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / STATE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise NoraError(f"training state {path} is corrupt or truncated ({type(exc).__name__})") from None


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """Accept a run folder, a .safetensors file or its .json; return (weights, meta)."""
    path = Path(path)
    if path.is_dir():
        weights, meta = path / WEIGHTS, path / META
    elif path.suffix == ".json":
        weights, meta = path.with_name(WEIGHTS) if path.name == META else path.with_suffix(".safetensors"), path
    else:
        weights, meta = path, path.with_suffix(".json")
    if not path.exists():
        raise NoraError(f"no checkpoint at {path}: no such file or folder")
    if not weights.exists():
        raise NoraError(f"no checkpoint at {path}: {weights.name} not found there" if path.is_dir()
                        else f"no checkpoint at {path}: {weights} not found")
    if not meta.exists():
        raise NoraError(f"checkpoint {weights} has no description file {meta.name} beside it")
    return weights, meta


def read_meta(path: str | Path) -> dict[str, Any]:
    _, meta_path = resolve_checkpoint(path)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NoraError(f"checkpoint description {meta_path} is not valid JSON (corrupt or truncated)") from None
    for key in ("arch", "arch_kwargs"):
        if key not in meta:
            raise NoraError(f"checkpoint description {meta_path} lacks '{key}'")
    return meta


def load_weights(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The weights; with ``expected_sha256`` (from model.json) the file must hash to it."""
    weights, meta = resolve_checkpoint(path)
    try:
        data = weights.read_bytes()
    except OSError as exc:
        raise NoraError(f"cannot read checkpoint {weights}: {exc.strerror or exc}") from None
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise NoraError(f"checkpoint {weights} is corrupt or truncated: it does not match the sha256 "
                        f"recorded in {meta.name} (or the two files come from different saves)")
    try:
        return st_load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise NoraError(f"checkpoint {weights} is corrupt or truncated ({exc})") from None


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load weights, refusing a checkpoint made for another architecture with one clear line."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise NoraError(f"checkpoint {source} does not match the model architecture ({detail})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise NoraError(
                f"checkpoint {source} does not match the model architecture "
                f"({key}: {tuple(value.shape)} vs {tuple(expected[key].shape)})"
            )
    model.load_state_dict(state)
    return model


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as (zoo name or user factory), and load its weights.

    The weights are checked against the sha256 in model.json; checkpoints written before the checksum
    was recorded load unchecked.
    """
    from nora.models import build_model

    meta = read_meta(path)
    checksum = meta.get(CHECKSUM)
    if checksum is not None and not (isinstance(checksum, str) and len(checksum) == 64):
        raise NoraError(f"checkpoint description for {path} has a malformed {CHECKSUM} {checksum!r}")
    if not isinstance(meta["arch_kwargs"], dict):
        raise NoraError(f"checkpoint description for {path}: arch_kwargs must be a mapping")
    model = build_model(meta["arch"], **meta["arch_kwargs"])
    load_into(model, load_weights(path, checksum), str(path))
    model.eval()
    return model, meta
