"""Shared pieces of the command line: consoles, the one set of noise flags, config and override parsing.

Every analysis command builds its noise specification the same way: the ``eval.noise`` section of
``--config FILE`` (or of the checkpoint's saved config), then ``--set key=value`` overrides, then the
explicit noise flags; the result is a ``NoiseConfig``, turned into a ``NoiseSpec`` exactly as a YAML
file or a Python user would.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from nora.errors import NoraError
from nora.report.console import print_table as _print_table
from nora.report.console import table_console

console = table_console()
err_console = table_console(stderr=True)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    _print_table(console, title, columns, rows)


def print_result(result, *, as_json: bool = False, written: Sequence[Path] = ()) -> None:
    """A workflow result: its tables (or one JSON document with ``--json``) and the files written."""
    if as_json:
        print(json.dumps({"kind": result.kind, "out": str(result.out), "meta": result.meta,
                          "tables": [{"title": t, "columns": c, "rows": r} for t, c, r in result.tables()],
                          "files": [str(p) for p in written]}, default=str))
        return
    for title, columns, rows in result.tables():
        print_table(title, columns, rows)
    if written:
        console.print("wrote " + ", ".join(str(p) for p in written), soft_wrap=True)


# --------------------------------------------------------------------------------- values and overrides
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


def check_positive(value: int, flag: str) -> int:
    if value < 1:
        raise NoraError(f"{flag} must be >= 1, got {value}")
    return value


def check_sigmas(sigmas: Sequence[float]) -> list[float]:
    from nora.noise.models import check_sigma

    return [check_sigma(s) for s in sigmas]


# --------------------------------------------------------------------------------- the noise flags
def noise_args(parser: argparse.ArgumentParser, sigma_help: str | None = None, *, multi_ratio: bool = False,
               sigma: bool = True) -> None:
    """The noise flags of every command; flags left out keep the value of ``--config`` / ``--set``.

    ``sigma_help`` makes --sigma optional where another flag can stand in; ``multi_ratio`` lets
    --ratio take several values (one curve each); ``sigma=False`` leaves --sigma out (grids instead).
    """
    group = parser.add_argument_group("noise specification (config: eval.noise)")
    group.add_argument("--config", dest="noise_file", metavar="FILE",
                       help="a run config YAML whose eval section (noise, sigmas, repeats) is used")
    group.add_argument("--set", dest="overrides", nargs="*", metavar="KEY=VALUE",
                       help="config keys, e.g. eval.noise.weight.sigma=0.02 eval.noise.repeats={ReLU: 4}")
    group.add_argument("--noise", choices=["additive", "multiplicative", "combined"],
                       help="noise model (config: eval.noise.kind; default additive)")
    if sigma:
        group.add_argument("--sigma", type=float, nargs="+", required=sigma_help is None,
                           help=sigma_help or "noise level(s); the amplitude for combined noise (config: eval.sigmas)")
    group.add_argument("--ratio", type=float, nargs="+" if multi_ratio else None,
                       help="combined noise: additive share r" + ("; several give one curve each and a heat map"
                                                                   if multi_ratio else "") + " (config: eval.noise.ratio)")
    group.add_argument("--order", choices=["mul_add", "add_mul"], help="combined noise order")
    group.add_argument("--relative", choices=["std", "maxabs"],
                       help="sigma relative to each site's clean output std or max|x| (calibrated on the data)")
    group.add_argument("--normalize", action="store_true", default=None, help="divide sigma by the elements per sample")
    group.add_argument("--sites", nargs="+", help="sites: indices, ranges 0-5, names, globs, or types (default: all)")
    group.add_argument("--site-repeats", type=int, help="repeated execution R at every noisy site (config: eval.noise.repeats)")
    group.add_argument("--weight-sigma", type=float, help="weight noise sigma on every Linear/Conv layer "
                                                         "(config: eval.noise.weight.sigma)")
    group.add_argument("--analog", metavar="PRESET|FILE",
                       help="an analog hardware model: a preset (ideal, output-noise-only, pcm, bss2, bss2-chip) "
                            "or a YAML file (config: eval.noise.hardware)")
    group.add_argument("--noise-mode", choices=["exact", "fast"],
                       help="exact: fresh draws (default for evaluation); fast: a pre-drawn Gaussian bank")
    group.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: where the model is)")


def _flag_values(args) -> dict[str, Any]:
    values = {"kind": args.noise, "order": args.order, "relative": args.relative,
              "normalize": args.normalize, "repeats": args.site_repeats, "mode": getattr(args, "noise_mode", None)}
    ratio = getattr(args, "ratio", None)
    if ratio is not None:
        values["ratio"] = ratio[0] if isinstance(ratio, list) else ratio
    if args.sites:
        values["sites"] = sites_arg(args.sites)
    if getattr(args, "analog", None):
        values["hardware"] = hardware_arg(args.analog)
    return {k: v for k, v in values.items() if v is not None}


def hardware_arg(text: str) -> dict[str, Any]:
    """--analog: a preset name, or a YAML file whose mapping (or its ``hardware:`` key) describes the model."""
    from pathlib import Path

    from nora.config import read_yaml

    if Path(text).suffix.lower() in (".yaml", ".yml") or Path(text).is_file():
        data = read_yaml(text, "hardware")
        data = data.get("hardware", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise NoraError(f"{text}: a hardware file holds a mapping (kind, preset, fields)")
        return data
    return {"preset": text}


def analysis_config(args, base: Any = None) -> Any:
    """The run config an analysis works from: ``base`` (a checkpoint's saved config), or --config,
    with --set overrides and then the explicit noise flags applied; validated like a file."""
    from nora.config import NoiseConfig, apply_overrides, load_config, parse_config

    config = load_config(args.noise_file) if getattr(args, "noise_file", None) else (base or parse_config({}))
    data = config.model_dump(mode="json")
    if base is not None and getattr(args, "noise_file", None):
        data["data"] = base.model_dump(mode="json")["data"]  # the data stay those the checkpoint was trained on
    if data["eval"]["noise"] is None:
        data["eval"]["noise"] = NoiseConfig().model_dump(mode="json")
    config = parse_config(data, getattr(args, "noise_file", None) or "saved config")
    overrides = parse_overrides(getattr(args, "overrides", None))
    if overrides:
        config = apply_overrides(config, overrides, "--set")
    flags = {f"eval.noise.{k}": v for k, v in _flag_values(args).items()}
    if getattr(args, "weight_sigma", None) is not None:
        weight = config.eval.noise.weight.model_dump(mode="json") if config.eval.noise.weight else {}
        flags["eval.noise.weight"] = {**weight, "sigma": args.weight_sigma}
    return apply_overrides(config, flags, "noise options") if flags else config


def noise_config(args, base: Any = None):
    """The ``NoiseConfig`` the flags, --config and --set ask for (additive everywhere by default)."""
    from nora.config import NoiseConfig

    return analysis_config(args, base).eval.noise or NoiseConfig()
