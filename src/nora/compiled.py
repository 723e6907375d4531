"""C++ kernels built on first use with torch's extension loader (ninja, a dependency, and a C++ compiler).

A few hot loops (a bank draw with one level per sample, a convolution's DAC codes) cost one pass in
C++ where torch needs several over memory. Each is built once per machine and CPU type (about a
minute; cached in torch's extension directory) for the host CPU, so its name carries a fingerprint of
the CPU's features. Building needs a C++ compiler and ninja; without them ``build`` returns None and
the callers keep torch's path, which gives the same bits.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import zlib
from pathlib import Path

log = logging.getLogger(__name__)


def _cpu_fingerprint() -> str:
    """A short hash of the CPU's feature flags: builds for one CPU type are not reused on another."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = "unknown"
    return f"{zlib.crc32(flags.encode()):08x}"


@functools.cache
def build(name: str, source: str, functions: tuple[str, ...], what: str, cflags: tuple[str, ...] = ()):
    """The built module ``name`` exporting ``functions`` (compiled with ``cflags`` besides the usual
    ones), or None where it cannot be built."""
    if importlib.util.find_spec("ninja") is None:  # a dependency, but a broken install may lack it
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        log.info("building nora's %s (once per machine; about a minute)", what)
        return load_inline(
            name=f"{name}_{_cpu_fingerprint()}", cpp_sources=[source], functions=list(functions),
            extra_cflags=["-O3", "-march=native", "-fopenmp", *cflags], extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # noqa: BLE001 - any build failure leaves the (bit-identical) torch path
        log.warning("nora's %s could not be built (%s); torch's and numpy's paths give the same numbers, slower "
                    "(exact-mode draws about 30x): install a C++ compiler to build them", what, error)
        return None
