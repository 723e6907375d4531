"""``nora uncertainty``: one checkpoint, its test set, an OOD set, shifts and noise levels -> report files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nora.errors import NoraError
from nora.models.multihead import require_heads
from nora.uncertainty.evaluate import evaluate_uncertainty, member_probs, write_report
from nora.uncertainty.repulsion_sets import check_shape, load_ood
from nora.uncertainty.shift import parse_shift


def per_head_accuracy(model, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Each member's own test accuracy (a head-specific view: refused for single-head models)."""
    require_heads(model, "per-head accuracy")
    probs = member_probs(model, x)
    return [float((probs[:, m].argmax(1) == y).double().mean()) for m in range(probs.shape[1])]


def run_uncertainty(
    checkpoint: str | Path,
    *,
    ood: str | None = None,
    ood_root: str | None = None,
    ood_subset: int | None = None,
    data_root: str | None = None,
    test_subset: int | None = None,
    shifts: Sequence[str] = (),
    noise_cfg=None,
    sigmas: Sequence[float] = (),
    repeats: int = 5,
    seed: int = 0,
    bins: int = 15,
    per_head: bool = False,
    output: str | Path | None = None,
    device: str | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``<run>/uncertainty/`` (or ``output``); returns rows, members, files, per-head accuracy."""
    from nora.config import apply_overrides, parse_config
    from nora.train.checkpoint import load_model
    from nora.train.setup import load_data

    from nora.devices import resolve_device

    model, meta = load_model(checkpoint)
    model.to(resolve_device(device))
    config = parse_config(meta.get("config", {}), f"{checkpoint} (saved config)")
    overrides = {k: v for k, v in (("data.root", data_root), ("data.test_subset", test_subset)) if v is not None}
    if overrides:
        config = apply_overrides(config, overrides)
    _, test = load_data(config.data)
    check_shape(f"test set {config.data.dataset!r}", test.input_shape, model.input_shape)
    heads_acc = per_head_accuracy(model, test.x, test.y) if per_head else None
    ood_x = None
    if ood:
        ood_data = load_ood(ood, split="test", root=ood_root, like=config.data.root, subset=ood_subset)
        check_shape(f"OOD set {ood!r}", ood_data.input_shape, model.input_shape)
        ood_x = ood_data.x
    parsed = [parse_shift(s) for s in shifts]
    if sigmas and noise_cfg is None:
        raise NoraError("noise levels given without a noise model")
    out_dir = Path(output) if output else (Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent) / "uncertainty"
    report = evaluate_uncertainty(
        model, test.x, test.y, ood_x=ood_x, ood_name=ood or "ood", shifts=parsed, shift_std=test.std,
        noise_cfg=noise_cfg, sigmas=list(sigmas), repeats=repeats, seed=seed, bins=bins, progress=progress)
    files = write_report(report, out_dir, title=f"{meta.get('arch')} on {config.data.dataset}")
    return {"rows": report.rows, "members": report.members, "files": files, "per_head": heads_acc,
            "dataset": config.data.dataset, "ood": ood, "out_dir": out_dir}


def progress_steps(shifts: Sequence[str], sigmas: Sequence[float], repeats: int) -> int:
    return 1 + sum(len(parse_shift(s)[1]) for s in shifts) + len(sigmas) * repeats
