"""The layout shows the design: data flows down the layers, no import runs upward, nothing global at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "nora"

#: Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ["errors", "version", "seeds", "devices", "io", "tables", "stats", "progress", "compiled"],
    ["config"],
    ["noise"],
    ["sim", "analog"],
    ["measure"],
    ["models", "quant"],
    ["data"],
    ["train"],
    ["analysis", "dynamic", "uncertainty"],
    ["sweep", "export", "compress", "perf"],
    ["report"],
    ["workflows"],
    ["cli", "__main__", "__init__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """Every nora module a file imports, at the top or inside functions."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "nora":
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "nora")


def test_every_package_has_a_layer_and_no_import_runs_upward():
    upward, unranked = [], []
    for path in sorted(ROOT.rglob("*.py")):
        own = "__init__" if path.parent == ROOT and path.stem == "__init__" else (
            path.stem if path.parent == ROOT else path.relative_to(ROOT).parts[0])
        if own not in RANK:
            unranked.append(own)
            continue
        for module in _imports(path):
            other = _package(module)
            if other not in RANK:
                unranked.append(other)
            elif RANK[other] > RANK[own]:
                upward.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not unranked, f"packages without a layer: {sorted(set(unranked))}"
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_importing_nora_sets_nothing_global():
    script = (
        "import torch, matplotlib\n"
        "threads, state, backend = torch.get_num_threads(), torch.random.get_rng_state(), matplotlib.rcParams['backend']\n"
        "import importlib, pkgutil, nora\n"
        "skip = ('nora.cli', 'nora.__main__')\n"
        "for info in pkgutil.walk_packages(nora.__path__, 'nora.'):\n"
        "    if not info.name.startswith(skip):\n"
        "        try:\n"
        "            importlib.import_module(info.name)\n"
        "        except ImportError as exc:\n"
        "            if 'nora' in str(exc): raise\n"  # optional heavy extras may be absent; nora's own modules may not
        "import nora.cli\n"
        "assert torch.get_num_threads() == threads, 'thread count changed'\n"
        "assert torch.equal(torch.random.get_rng_state(), state), 'global RNG used'\n"
        "assert matplotlib.rcParams['backend'] == backend, 'matplotlib backend changed'\n"
        "print('clean')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "clean" in done.stdout, done.stderr[-2000:]
