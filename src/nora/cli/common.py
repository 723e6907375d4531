"""Shared pieces of the command line: consoles, tables, override parsing, noise flags, reports."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from nora.errors import NoraError

console = Console()
err_console = Console(stderr=True)


# --------------------------------------------------------------------------------- helpers
def parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise NoraError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out


def sites_arg(values: Sequence[str] | None) -> Any:
    if not values:
        return "all"
    return [int(v) if v.isdigit() else v for v in values]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    console.print(title, highlight=False)
    table = Table()
    for col in columns:
        table.add_column(col, justify="right" if col not in ("name", "type", "noise", "module") else "left")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)


def noise_args(parser: argparse.ArgumentParser, sigma_help: str | None = None) -> None:
    """The noise-model flags; ``sigma_help`` makes --sigma optional where another flag can stand in."""
    parser.add_argument("--noise", default="additive", choices=["additive", "multiplicative", "combined"],
                        help="noise model (config: eval.noise.kind)")
    parser.add_argument("--sigma", type=float, nargs="+", required=sigma_help is None,
                        help=sigma_help or "noise level(s); the amplitude for combined noise (config: eval.sigmas)")
    parser.add_argument("--ratio", type=float, default=0.5, help="combined noise: additive share r (config: eval.noise.ratio)")
    parser.add_argument("--order", default="mul_add", choices=["mul_add", "add_mul"], help="combined noise order")
    parser.add_argument("--relative", choices=["std", "maxabs"], default=None,
                        help="sigma relative to each site's clean output std or max|x| (calibrated on test data)")
    parser.add_argument("--normalize", action="store_true", help="divide sigma by the elements per sample")
    parser.add_argument("--sites", nargs="+", default=None,
                        help="sites: indices, ranges 0-5, names, globs, or types (default: all)")
    parser.add_argument("--site-repeats", type=int, default=1, help="repeated execution R at every noisy site")


def noise_config(args):
    from pydantic import ValidationError

    from nora.config import NoiseConfig, format_validation_error

    try:
        return NoiseConfig(kind=args.noise, sigma=0.0, ratio=args.ratio, order=args.order, relative=args.relative,
                           normalize=args.normalize, sites=sites_arg(args.sites), repeats=args.site_repeats)
    except ValidationError as exc:
        raise NoraError(format_validation_error(exc, "noise options")) from None


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    from nora.noise.models import check_sigma

    return [check_sigma(s) for s in sigmas]




def default_eval_noise():
    from nora.config import NoiseConfig

    return NoiseConfig(kind="additive")


def evaluate_and_report(model, config, noise_cfg, sigmas, repeats, out_stem: Path, *, seed: int,
                         confidence: float = 0.95, title: str = "") -> list[dict]:
    from rich.progress import Progress

    from nora.analysis.evaluate import accuracy, noisy_accuracy
    from nora.analysis.plots import accuracy_vs_sigma
    from nora.data import make_loader
    from nora.train.metrics import write_table
    from nora.train.setup import injector_options, load_data, noise_model

    _, test = load_data(config.data)
    loader = make_loader(test, batch_size=config.data.test_batch_size, shuffle=False)
    clean = accuracy(model, loader)
    options = injector_options(noise_cfg)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("noisy evaluation", total=len(sigmas) * repeats)
        rows = noisy_accuracy(model, loader, noise_model(noise_cfg), sigmas, repeats=repeats, seed=seed,
                              confidence=confidence, injector_options=options,
                              progress=lambda: progress.advance(task))
    chance = 1.0 / test.num_classes
    kind = noise_cfg.kind
    print_table(
        f"{kind} noise, {repeats} repeats, sites={noise_cfg.sites}: clean accuracy {clean:.4f}, chance {chance:.2f}",
        ["sigma", "mean acc", "std", f"{int(confidence * 100)}% CI low", "CI high"],
        [(r["sigma"], r["mean"], r["std"], r["ci_low"], r["ci_high"]) for r in rows],
    )
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    extra = {"clean_accuracy": clean, "chance": chance, "noise": noise_cfg.model_dump(mode="json"),
             "repeats": repeats, "seed": seed}
    write_table(out_stem, rows, extra)
    accuracy_vs_sigma({f"{kind}, sites={noise_cfg.sites}": rows}, out_stem.with_suffix(".png"),
                      clean=clean, chance=chance, title=title or f"{kind} noise")
    console.print(f"wrote {out_stem.with_suffix('.json')}, .csv and .png")
    return rows


