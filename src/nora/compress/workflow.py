"""``nora compress``: search a per-layer pruning/quantisation policy against measured latency, retrain the
chosen one, and return its accuracy, latency, policy table and every evaluated policy (the report
writer, ``nora.report.files.save``, writes them as result.json, policy.csv, episodes.csv and the
Pareto plot); ``resume`` continues a folder, on the same engine or another (sequential, local fork
pool, Ray). The search's own state (search.json, episodes.json, caches) is kept as it runs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Callable

from nora.compress.actions import apply_policy
from nora.compress.results import policy_rows
from nora.compress.retrain import retrain
from nora.compress.search import EXECUTION, Search, SearchSettings, make_evaluator, split_data
from nora.errors import NoraError
from nora.measure import clean_accuracy
from nora.perf.layers import layer_specs

def default_out(settings: SearchSettings, arch: str) -> Path:
    suffix = "" if settings.mode == "joint" else f"-{settings.mode}"
    return Path("runs") / f"compress-{arch}-{settings.agent}{suffix}"


def read_settings_file(path: str | Path) -> dict:
    """A YAML mapping of search settings (the ``compress`` flags with underscores), checked key by key."""
    from nora.config import read_yaml

    data = read_yaml(path, "compression config")
    if not isinstance(data, dict):
        raise NoraError(f"{path} must hold a mapping of compression settings")
    known = {f.name for f in fields(SearchSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NoraError(f"{path}: unknown compression setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return data


def _load(settings: SearchSettings):
    from nora.config import apply_overrides, parse_config
    from nora.train.checkpoint import load_model
    from nora.train.setup import load_data

    model, meta = load_model(settings.checkpoint)
    if "config" not in meta:
        raise NoraError(f"checkpoint {settings.checkpoint} records no training config (not made by `nora train`), "
                        "so its data set is unknown")
    config = parse_config(meta["config"], f"{settings.checkpoint} (saved config)")
    if settings.data_root:
        config = apply_overrides(config, {"data.root": settings.data_root})
    train, test = load_data(config.data)
    return model, meta, train, test


def open_search(settings: SearchSettings, out_dir: str | Path | None = None,
                progress: Callable[[dict], None] | None = None) -> Search:
    """Validate the settings and open (or reopen) the search folder; a folder of another search is refused."""
    from nora.seeds import SeedTree

    settings.check()
    model, meta, train, test = _load(settings)
    out = Path(out_dir) if out_dir else default_out(settings, meta["arch"])
    stored = out / "search.json"
    if stored.exists():
        previous = {k: v for k, v in json.loads(stored.read_text())["settings"].items() if k not in EXECUTION}
        current = settings.identity()
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise NoraError(f"{out} holds a different search (differs in {', '.join(changed)}); use "
                            f"`nora compress --resume {out}` or another --out")
    data = split_data(train, test, settings, SeedTree(settings.seed))
    return Search(out, settings, model, data, progress)


def compress(checkpoint: str, out_dir: str | Path | None = None, *, progress: Callable[[dict], None] | None = None,
             stop_after: int | None = None, **options) -> dict:
    """Run (or continue) a search, then retrain and report the chosen policy.

    ``engine="local"|"ray"|"sequential"``, ``workers`` and ``address`` choose where candidates are
    evaluated; a folder started under other ones continues (the numbers do not depend on them)."""
    known = {f.name for f in fields(SearchSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise NoraError(f"unknown compression option {unknown[0]!r}")
    return _run(SearchSettings(checkpoint=str(checkpoint), **options), out_dir, progress, stop_after)


def resume(out_dir: str | Path, *, progress: Callable[[dict], None] | None = None,
           stop_after: int | None = None, **execution) -> dict:
    """Continue a search folder with its own settings; ``engine``, ``workers`` and ``address`` may be
    given anew (None keeps the stored one)."""
    unknown = sorted(set(execution) - set(EXECUTION))
    if unknown:
        raise NoraError(f"a resumed search keeps its settings; only {', '.join(EXECUTION)} may change, "
                        f"not {unknown[0]!r}")
    stored = Path(out_dir) / "search.json"
    if not stored.exists():
        raise NoraError(f"{out_dir} is not a compression search folder (no search.json)")
    try:
        settings = SearchSettings(**json.loads(stored.read_text())["settings"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise NoraError(f"{stored} is corrupt ({type(exc).__name__}: {exc})") from None
    changes = {k: v for k, v in execution.items() if v is not None}
    if changes.get("engine", "ray") != "ray" and "address" not in changes:
        changes["address"] = None  # the stored Ray address does not apply to another engine
    return _run(replace(settings, **changes), out_dir, progress, stop_after)


def _run(settings: SearchSettings, out_dir: str | Path | None, progress: Callable[[dict], None] | None,
         stop_after: int | None) -> dict:
    settings.check()
    evaluator = make_evaluator(settings)  # first: an unreachable Ray cluster fails before anything is written
    try:
        search = open_search(settings, out_dir, progress)
        start = time.perf_counter()
        search.run(stop_after, evaluator)
        search_s = time.perf_counter() - start
    finally:
        evaluator.close()
    if len(search.episodes) < search.settings.episodes:
        return {"out": str(search.out), "finished": False, "episodes": len(search.episodes)}
    execution = {"engine": evaluator.name, "workers": settings.workers, "address": settings.address,
                 "startup_s": evaluator.startup_seconds}
    return finish(search, search_s, execution)


def finish(search: Search, search_s: float = 0.0, execution: dict | None = None) -> dict:
    """Retrain the chosen policy; final test accuracy and latency, the policy table, and the evaluated
    policies (``records``) with the chosen one for the Pareto plot. ``execution`` (where the
    candidates were evaluated) is recorded beside the result."""
    s = search.settings
    chosen = search.best()
    policy = search.policy(chosen)
    pruned, compressed = apply_policy(search.model, search.input_shape, policy, search.data.calib_x, s.round_to)
    test = search.data.test
    before = clean_accuracy(compressed, test.x, test.y)
    start = time.perf_counter()
    compressed = retrain(compressed, search.data.train, epochs=s.retrain_epochs, lr=s.retrain_lr,
                         seed=search.tree.child("retrain"))
    retrain_s = time.perf_counter() - start
    specs = layer_specs(pruned, search.input_shape, {p.name: (p.w_bits, p.a_bits) for p in policy})
    parts = [search.meter.layer(spec) for _, spec in specs]
    latency = sum(p.seconds for p in parts)
    search.cache.save()
    final = {
        "episode": chosen["episode"], "reference_test_accuracy": clean_accuracy(search.model, test.x, test.y),
        "test_accuracy_before_retraining": before, "test_accuracy": clean_accuracy(compressed, test.x, test.y),
        "val_accuracy": clean_accuracy(compressed, search.data.val_x, search.data.val_y),
        "latency_s": latency, "reference_latency_s": search.reference["latency_s"],
        "latency_ratio": latency / search.reference["latency_s"], "met_target": chosen["latency_ratio"] <= s.target,
        "kernels": {k: sum(p.kernel == k for p in parts) for k in sorted({p.kernel for p in parts})},
        "estimated": [p.spec_key for p in parts if not p.measured],
        "failures": [f for e in search.episodes for f in e["failures"]],
        "retrain_s": retrain_s, "search_s": search_s, "cache_hit_rate": search.cache.hit_rate,
    }
    layers = [asdict(l) for l in search.layers]
    channels = {name: (spec.in_channels, spec.out_channels) for name, spec in specs}
    latencies = {name: (p.kernel, p.seconds) for (name, _), p in zip(specs, parts)}
    table = policy_rows(layers, chosen, channels, latencies)
    return {"out": str(search.out), "finished": True, "settings": asdict(s), "reference": search.reference,
            "final": final, "policy": table, "episodes": len(search.episodes), "execution": execution or {},
            "records": list(search.episodes), "chosen": chosen}
