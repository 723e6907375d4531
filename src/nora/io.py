"""Atomic file writes and a per-run-folder lock, so that no run loses or half-writes a result.

Writes go to a temporary file beside the target, are fsynced and renamed into place: a killed run
leaves either the old file or the new one. The temporary file is created with ``os.open(..., 0o666)``
so the kernel applies the user's umask, as for any ordinary file (``mkstemp`` would make it 0600).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from nora.errors import NoraError

LOCK_FILE = ".nora.lock"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, Path]:
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file beside {path}")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


class RunLock:
    """Exclusive, non-blocking hold on a run folder for as long as the ``with`` block runs.

    Two processes writing one run folder would silently lose one result, so the second one fails at
    once with the holder's process id. ``flock`` is released by the kernel when the holder dies, so a
    killed run never leaves a stale lock. The lock file is removed on release; a process that opened
    it just before the removal notices (its descriptor no longer names the file) and tries again.
    Nested locks on the same folder within one process are allowed (a forked child is another process).
    """

    _held: dict[tuple[int, str], list] = {}  # (pid, real path) -> [fd, depth]

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE

    def __enter__(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = (os.getpid(), os.path.realpath(self.path))
        held = RunLock._held.get(key)
        if held is not None:
            held[1] += 1
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise NoraError(f"run folder {self.run_dir} is in use by {holder}; wait for it to finish "
                                "or use another run name") from None
            except OSError:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and flock
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        RunLock._held[key] = [fd, 1]
        return self

    def __exit__(self, *exc: object) -> None:
        key = (os.getpid(), os.path.realpath(self.path))
        held = RunLock._held[key]
        held[1] -= 1
        if held[1] > 0:
            return
        del RunLock._held[key]
        self.path.unlink(missing_ok=True)
        os.close(held[0])  # closing releases the flock


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        text = []
    if not text:
        return "another process"
    host = f" on {text[1]}" if len(text) > 1 and text[1] != socket.gethostname() else ""
    return f"process {text[0]}{host}"
