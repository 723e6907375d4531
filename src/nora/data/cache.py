"""Decoded-array cache, so that slow decodes (60,000 JPEGs, MFCCs of thousands of wavs) run once.

An entry is one uncompressed ``.npz`` keyed by dataset, part, a format version and a fingerprint of
the source files (path, size, mtime), so editing or replacing the data invalidates it. Entries are
written atomically and read without pickle; an unreadable entry is rebuilt, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from nora.io import atomic_write_bytes

# Bump when a loader changes what it stores, so stale entries are not reused.
FORMAT_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$NORA_CACHE``, else ``~/.cache/nora``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("NORA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "nora"


def fingerprint(paths: Iterable[Path]) -> str:
    """Digest of the sources' paths, sizes and modification times (cheap: no file contents read)."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for path in sorted(os.path.abspath(p) for p in paths):
        stat = os.stat(path)
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def entry_path(cache_dir: str | os.PathLike | None, dataset: str, part: str, sources: Iterable[Path]) -> Path:
    return cache_root(cache_dir) / "datasets" / f"{dataset}-{part}-{fingerprint(sources)}.npz"


def cached_arrays(
    cache_dir: str | os.PathLike | None,
    dataset: str,
    part: str,
    sources: Sequence[Path],
    keys: Sequence[str],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, read from the cache when a valid entry exists."""
    path = entry_path(cache_dir, dataset, part, sources)
    if path.exists():
        arrays = _read(path, keys)
        if arrays is not None:
            return arrays
        print(f"warning: ignoring unreadable cache file {path}; rebuilding it", file=sys.stderr)
    arrays = build()
    _write(path, arrays)
    return arrays


def store(
    cache_dir: str | os.PathLike | None, dataset: str, part: str, sources: Sequence[Path], arrays: dict[str, np.ndarray]
) -> None:
    """Cache arrays built as a by-product of another part (e.g. both splits decoded from one archive)."""
    _write(entry_path(cache_dir, dataset, part, sources), arrays)


def _read(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in keys}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as exc:  # a read-only or full cache costs speed, not correctness
        print(f"warning: could not write cache file {path}: {exc}", file=sys.stderr)
        return
    # Entries for older versions of the same sources would otherwise pile up (CIFAR-10 is 150 MB).
    stem = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{stem}-*.npz"):
        if old != path and old.name.rsplit("-", 1)[0] == stem:
            old.unlink(missing_ok=True)
