"""``nora uncertainty``: one checkpoint, its test set, an OOD set, shifts and noise levels -> a result."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from nora.errors import NoraError
from nora.progress import Reporter
from nora.uncertainty.evaluate import evaluate_uncertainty, per_head_accuracy
from nora.uncertainty.repulsion_sets import check_shape, load_ood
from nora.uncertainty.shift import parse_shift
from nora.workflows.results import UncertaintyResult


def uncertainty(
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
    progress: Reporter | None = None,
) -> UncertaintyResult:
    """Calibration, OOD detection and the entropy split of a checkpoint, clean, under shift and noise;
    the report writer saves it to ``<run>/uncertainty/`` (or ``output``)."""
    from nora.config import apply_overrides, parse_config
    from nora.devices import resolve_device
    from nora.train.checkpoint import load_model
    from nora.train.setup import load_data

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
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    advance = None
    if progress is not None:
        progress.start("uncertainty", 1 + sum(len(levels) for _, levels in parsed) + len(sigmas) * repeats)
        advance = progress.advance
    report = evaluate_uncertainty(
        model, test.x, test.y, ood_x=ood_x, ood_name=ood or "ood", shifts=parsed, shift_std=test.std,
        noise_cfg=noise_cfg, sigmas=list(sigmas), repeats=repeats, seed=seed, bins=bins, progress=advance)
    described = {"checkpoint": str(checkpoint), "model": meta.get("arch"), "dataset": config.data.dataset,
                 "test_samples": len(test), "weights_sha256": meta.get("weights_sha256"), "ood": ood,
                 "shifts": list(shifts), "noise": None if noise_cfg is None else noise_cfg.model_dump(mode="json"),
                 "sigmas": list(sigmas), "repeats": repeats, "seed": seed, "bins": bins, "members": report.members}
    return UncertaintyResult(Path(output) if output else run_dir / "uncertainty", report.rows, described,
                             f"{meta.get('arch')} on {config.data.dataset}", heads_acc)
