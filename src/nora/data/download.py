"""Fetching the official distributions, with timeouts, checksums and no half-written files.

A download streams into a temporary file beside its target and is renamed into place only after the
checksum matches, so an interrupted or corrupt transfer never looks like a dataset. Archives that
the loaders cannot read directly are unpacked through a staging folder, refusing unsafe member paths.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from nora.errors import NoraError

DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    filename: str
    urls: tuple[str, ...]
    md5: str | None
    unpack: Callable[[str], str | None] | None = None  # member name -> path under root, None to skip


def _identity(name: str) -> str:
    return name


def _fsdd_member(name: str) -> str | None:
    match = re.search(r"(?:^|/)recordings/([^/]+\.wav)$", name)
    return f"recordings/{match.group(1)}" if match else None


def _idx_resources(mirrors: tuple[str, ...], checksums: dict[str, str]) -> list[Resource]:
    return [Resource(name, tuple(m + name for m in mirrors), md5) for name, md5 in checksums.items()]


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

DOWNLOADS: dict[str, list[Resource]] = {
    "mnist": _idx_resources(MNIST_MIRRORS, {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcc592d807e",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": _idx_resources(FASHION_MIRRORS, {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "cifar10": [Resource(
        "cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",), "c58f30108f718f92721af3b95e74349a",
    )],
    "svhn": [
        Resource("train_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",), "e26dedcc434d2e4c54c9b2d4a06d8373"),
        Resource("test_32x32.mat", ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",), "eb5a983be6a315427106f1b164d9cef3"),
    ],
    "tiny-imagenet": [Resource(
        "tiny-imagenet-200.zip", ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",), "90528d7ca1a48142e341f4ef8d21d0de", _identity,
    )],
    "fsdd": [Resource(
        "free-spoken-digit-dataset-master.tar.gz",
        ("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.tar.gz",),
        None,
        _fsdd_member,
    )],
    "speech-commands": [Resource(
        "speech_commands_v0.02.tar.gz", ("http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",), None, _identity,
    )],
}


def fetch(name: str, root: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Download (and where needed unpack) dataset ``name`` into ``root``."""
    if name not in DOWNLOADS:
        raise NoraError(f"dataset '{name}' cannot be downloaded; datasets with downloads: {', '.join(DOWNLOADS)}")
    root.mkdir(parents=True, exist_ok=True)
    for resource in DOWNLOADS[name]:
        target = root / resource.filename
        if not target.is_file():
            _download_any(resource, target, timeout)
        if resource.unpack is not None:
            unpack(target, root, resource.unpack)
            target.unlink()


def download_file(url: str, dest: Path, md5: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """Stream ``url`` to ``dest``; the file appears only complete and, if ``md5`` is given, verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "nora"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise NoraError(f"could not download {url}: {reason}") from None
        if md5 is None:
            print(f"warning: {url} was not verified: no checksum is recorded for it", file=sys.stderr)
        else:
            verify_checksum(tmp, md5, origin=url)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify_checksum(path: Path, md5: str, origin: str | None = None) -> None:
    """Raise (and delete ``path``) unless its MD5 is ``md5``."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != md5.lower():
        Path(path).unlink(missing_ok=True)
        raise NoraError(
            f"checksum mismatch for {origin or path}: md5 {digest.hexdigest()}, expected {md5}; the file was removed"
        )


def unpack(archive: Path, root: Path, select: Callable[[str], str | None]) -> None:
    """Extract the selected regular files of a tar or zip archive into ``root``, via a staging folder."""
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as bundle:
                    for info in bundle.infolist():
                        if not info.is_dir():
                            _extract(select, info.filename, staging, partial(bundle.open, info))
            else:
                with tarfile.open(archive, "r:*") as bundle:
                    for member in bundle:
                        if member.isfile():
                            _extract(select, member.name, staging, partial(bundle.extractfile, member))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise NoraError(f"archive {archive} is corrupt or truncated: {exc}") from None
        for entry in staging.iterdir():
            target = root / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(select: Callable[[str], str | None], name: str, staging: Path, open_member) -> None:
    relative = select(name.removeprefix("./"))
    if relative is None:
        return
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise NoraError(f"refusing to unpack unsafe archive member {name!r}")
    target = staging.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open_member() as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _CHUNK)


def _download_any(resource: Resource, target: Path, timeout: float) -> None:
    errors = []
    for url in resource.urls:
        try:
            download_file(url, target, resource.md5, timeout)
            return
        except NoraError as exc:
            errors.append(str(exc))
    raise NoraError("; ".join(errors))
