"""Reproduce the Walking Noise findings on real MNIST (methods.md section 5), qualitatively.

1. Global midpoint noise level mu (additive, every site noisy) of LeNet-5 and the 784-64-64-64-10
   MLP trained without noise, with and without batch norm, beside the research configs' values.
2. The per-site mu profile of LeNet-5 with and without batch norm (fast inference-only walk).
3. Noisy training at sigma_t raises the accuracy at sigma_t and mu, for additive, multiplicative and
   combined noise, against the same network trained clean.
4. Under additive noisy training the weights grow; clamping them to [-1, 1] after every step is
   the control for "weights grow to beat the noise" (clamping alone is the control's control).
   Shown twice: LeNet-5 with noise at every site, and the MLP with strong noise at one site
   (layer-wise noisy training, where scaling the layers before the site raises the SNR), there
   also with a tight clamp [-0.2, 0.2].
5. Under multiplicative noisy training the MLP's hidden activations and weights turn bimodal
   (self-binarisation): histograms and Sarle's bimodality coefficient (> 5/9 suggests two modes).

Every training run is a normal nora run under --work-dir (resumed if killed); every evaluation is
cached there as JSON, so a rerun only computes what is missing. Figures (PNG) and their numbers
(CSV/JSON) go to --out.

    nice -n 5 python benchmarks/study_walking_noise.py --data-root /path/to/mnist
    python benchmarks/study_walking_noise.py --data-root /path/to/mnist --quick --work-dir /tmp/s --out /tmp/s/out
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from scipy import stats
from torch import nn

from nora.analysis import accuracy_curve, log_grid, walk
from nora.analysis.plots import accuracy_vs_sigma, save_figure
from nora.config import parse_config
from nora.data import load_dataset
from nora.io import atomic_write_json, atomic_write_text
from nora.noise import make_noise
from nora.sweep.point import weight_stats
from nora.train import train
from nora.tables import rows_to_csv

#: Global mu of networks trained without noise, from the research configs (methods.md section 5).
REFERENCE_MU = {"lenet5": 0.607, "lenet5-bn": 0.238, "mlp": 0.471, "mlp-bn": 0.350}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    arch: str
    kwargs: dict[str, Any]
    epochs: str  # which --*-epochs flag applies
    noise: dict[str, Any] | None = None
    clamp: tuple[float, float] | None = None
    baseline: str | None = None  # the clean-trained network this one is compared with

    @property
    def sigma_t(self) -> float | None:
        return None if self.noise is None else self.noise["sigma"]


RUNS = [
    Run("lenet5", "lenet5", {}, "clean"),
    Run("lenet5-bn", "lenet5", {"batch_norm": True}, "clean"),
    Run("mlp", "mlp", {}, "clean"),
    Run("mlp-bn", "mlp", {"batch_norm": True}, "clean"),
    Run("lenet5-clamp", "lenet5", {}, "clean", clamp=(-1.0, 1.0), baseline="lenet5"),
    Run("lenet5-add0.3", "lenet5", {}, "noisy", {"kind": "additive", "sigma": 0.3}, baseline="lenet5"),
    Run("lenet5-add1.0", "lenet5", {}, "noisy", {"kind": "additive", "sigma": 1.0}, baseline="lenet5"),
    Run("lenet5-add1.0-clamp", "lenet5", {}, "noisy", {"kind": "additive", "sigma": 1.0}, (-1.0, 1.0), "lenet5"),
    Run("mlp-add0.3", "mlp", {}, "mlp_noisy", {"kind": "additive", "sigma": 0.3}, baseline="mlp"),
    Run("mlp-mul0.5", "mlp", {}, "mlp_noisy", {"kind": "multiplicative", "sigma": 0.5}, baseline="mlp"),
    Run("mlp-mul1.0", "mlp", {}, "mlp_noisy", {"kind": "multiplicative", "sigma": 1.0}, baseline="mlp"),
    Run("mlp-comb1.0", "mlp", {}, "mlp_noisy", {"kind": "combined", "sigma": 1.0, "ratio": 0.5}, baseline="mlp"),
    Run("mlp-clamp0.2", "mlp", {}, "mlp_noisy", clamp=(-0.2, 0.2), baseline="mlp"),
    Run("mlp-site3-add10", "mlp", {}, "mlp_noisy", {"kind": "additive", "sigma": 10.0, "sites": [3]}, baseline="mlp"),
    Run("mlp-site3-add10-clamp1", "mlp", {}, "mlp_noisy", {"kind": "additive", "sigma": 10.0, "sites": [3]},
        (-1.0, 1.0), "mlp"),
    Run("mlp-site3-add10-clamp0.2", "mlp", {}, "mlp_noisy", {"kind": "additive", "sigma": 10.0, "sites": [3]},
        (-0.2, 0.2), "mlp"),
]
BY_NAME = {r.name: r for r in RUNS}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="folder with the four MNIST idx files")
    p.add_argument("--work-dir", default="runs/study-walking-noise", help="training runs and the evaluation cache")
    p.add_argument("--out", default="benchmarks/results/issue3", help="figures, CSV and JSON")
    p.add_argument("--clean-epochs", type=int, default=8)
    p.add_argument("--noisy-epochs", type=int, default=5, help="LeNet-5 noisy training")
    p.add_argument("--mlp-noisy-epochs", type=int, default=15, help="MLP noisy training (cheap)")
    p.add_argument("--repeats", type=int, default=3, help="noise draws per evaluated sigma")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="1 epoch each, 2000 test images: checks the script runs")
    return p.parse_args()


class Study:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        self.out = Path(args.out)
        self.console = Console(stderr=True)
        self.test = load_dataset("mnist", "test", root=args.data_root)
        if args.quick:
            self.test = self.test.subset(2000)
        self.grid = log_grid(1e-2, 1e2, 4)
        self.models: dict[str, nn.Module] = {}

    # ---------------------------------------------------------------------- plumbing
    def epochs(self, run: Run) -> int:
        if self.args.quick:
            return 1
        return {"clean": self.args.clean_epochs, "noisy": self.args.noisy_epochs,
                "mlp_noisy": self.args.mlp_noisy_epochs}[run.epochs]

    def model(self, name: str) -> nn.Module:
        if name not in self.models:
            run = BY_NAME[name]
            data = {"name": name, "output_dir": str(self.work / "runs"), "seed": 0,
                    "data": {"dataset": "mnist", "root": self.args.data_root},
                    "model": {"arch": run.arch, "kwargs": run.kwargs},
                    "train": {"epochs": self.epochs(run), "progress": False, "threads": self.args.threads,
                              "clamp_weights": list(run.clamp) if run.clamp else None},
                    "train_noise": run.noise}
            started = time.perf_counter()
            result = train(parse_config(data, f"study run {name}"), console=Console(quiet=True))
            self.console.print(f"{name}: test accuracy {result.test_accuracy:.4f} "
                               f"({time.perf_counter() - started:.0f} s)")
            self.models[name] = result.model.eval()
        return self.models[name]

    def cached(self, key: str, compute):
        path = self.work / "cache" / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text())
        started = time.perf_counter()
        value = compute()
        self.console.print(f"  {key} ({time.perf_counter() - started:.0f} s)")
        atomic_write_json(path, value)
        return value

    def curve(self, name: str, kind: str, ratio: float = 0.5, sites: list[int] | None = None) -> dict[str, Any]:
        """Accuracy vs sigma with noise at ``sites`` (every site when None)."""
        def compute():
            options = {"ratio": ratio} if kind == "combined" else {}
            return accuracy_curve(self.model(name), self.test.x, self.test.y, make_noise(kind, 0.0, **options),
                                  self.grid, num_classes=10, sites=sites, repeats=self.args.repeats, seed=0,
                                  label=name).to_dict()
        where = "" if sites is None else "-sites" + "_".join(map(str, sites))
        return self.cached(f"curve-{name}-{kind}{where}", compute)

    def at_sigma(self, name: str, noise: dict[str, Any]) -> dict[str, Any]:
        kind, sigma, sites = noise["kind"], noise["sigma"], noise.get("sites")
        options = {"ratio": noise["ratio"]} if kind == "combined" else {}

        def compute():
            curve = accuracy_curve(self.model(name), self.test.x, self.test.y, make_noise(kind, 0.0, **options),
                                   [sigma], num_classes=10, sites=sites, repeats=self.args.repeats, seed=1)
            return curve.rows[0]
        where = "" if sites is None else "-sites" + "_".join(map(str, sites))
        return self.cached(f"at-{name}-{kind}-{sigma}{where}", compute)

    def save_table(self, stem: str, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
        atomic_write_json(self.out / f"{stem}.json", {**(extra or {}), "rows": rows})
        atomic_write_text(self.out / f"{stem}.csv", rows_to_csv(rows))

    # ---------------------------------------------------------------------- the five parts
    def global_mu(self) -> list[dict[str, Any]]:
        rows, curves = [], {}
        for name, reference in REFERENCE_MU.items():
            curve = self.curve(name, "additive")
            curves[name] = curve["rows"]
            rows.append({"model": name, "clean_accuracy": curve["clean_accuracy"], "mu": curve["midpoint"]["mu"],
                         "status": curve["midpoint"]["status"], "reference_mu": reference})
        self.save_table("global_mu", rows, {"noise": "additive at every site", "sigmas": self.grid,
                                            "repeats": self.args.repeats})
        accuracy_vs_sigma(curves, self.out / "global_curves.png", chance=0.1,
                          title="MNIST, trained clean: additive noise at every site")
        return rows

    def site_profiles(self) -> dict[str, list[dict[str, Any]]]:
        profiles = {}
        for name in ("lenet5", "lenet5-bn"):
            def compute(name=name):
                result = walk(self.model(name), self.test.x, self.test.y, make_noise("additive", 0.0),
                              num_classes=10, sigma_range=(1e-3, 1e4), repeats=5, seed=0)
                return [{"site": s.site.index, "name": s.site.name, "type": s.site.module_type, "path": s.path,
                         "mu": s.midpoint.mu, "status": s.midpoint.status} for s in result.sites]
            profiles[name] = self.cached(f"walk-{name}", compute)
        self.save_table("site_mu_lenet5", [{"model": k, **r} for k, rows in profiles.items() for r in rows])
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
        for ax, (name, rows) in zip(axes, profiles.items()):
            found = [r for r in rows if r["mu"] is not None]
            ax.bar(range(len(found)), [r["mu"] for r in found], color="tab:blue", alpha=0.85)
            ax.set_xticks(range(len(found)))
            ax.set_xticklabels([f"{r['site']} {r['type']}" for r in found], rotation=60, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_title(f"{name}: mu per site (additive, noise at one site)")
            ax.grid(True, axis="y", which="both", alpha=0.3)
        axes[0].set_ylabel("midpoint noise level mu")
        save_figure(fig, self.out / "site_mu_lenet5.png")
        return profiles

    def noisy_training(self) -> list[dict[str, Any]]:
        rows = []
        plots: dict[str, dict[str, Any]] = {}
        for run in RUNS:
            if run.noise is None:
                continue
            kind, sites = run.noise["kind"], run.noise.get("sites")
            ratio = run.noise.get("ratio", 0.5)
            trained, clean = self.curve(run.name, kind, ratio, sites), self.curve(run.baseline, kind, ratio, sites)
            at_trained, at_clean = self.at_sigma(run.name, run.noise), self.at_sigma(run.baseline, run.noise)
            rows.append({"model": run.name, "noise": kind, "sigma_train": run.sigma_t,
                         "sites": "all" if sites is None else sites,
                         "clamp": _clamp(run.clamp),
                         "acc_at_sigma_clean_trained": at_clean["mean"],
                         "acc_at_sigma_noisy_trained": at_trained["mean"],
                         "mu_clean_trained": clean["midpoint"]["mu"], "mu_noisy_trained": trained["midpoint"]["mu"],
                         "clean_accuracy_noisy_trained": trained["clean_accuracy"]})
            where = "every site" if sites is None else f"site {','.join(map(str, sites))}"
            panel = plots.setdefault(f"{run.arch}, {kind} noise at {where}", {})
            panel[f"{run.baseline} (clean)"] = clean["rows"]
            panel[run.name] = trained["rows"]
        self.save_table("noisy_training", rows, {"sigmas": self.grid, "repeats": self.args.repeats})
        for title, curves in plots.items():
            stem = title.replace(", ", "_").replace(" noise at ", "_").replace("every site", "all").replace(" ", "")
            accuracy_vs_sigma(curves, self.out / f"noisy_training_{stem}.png", chance=0.1,
                              title=f"noisy training, {title}")
        return rows

    def weights(self) -> list[dict[str, Any]]:
        """Weight size and robustness, with and without clamping, for two noisy-training set-ups."""
        groups = {
            ("additive", None, 1.0): ("lenet5", "lenet5-clamp", "lenet5-add0.3", "lenet5-add1.0",
                                      "lenet5-add1.0-clamp"),
            ("additive", (3,), 10.0): ("mlp", "mlp-clamp0.2", "mlp-site3-add10", "mlp-site3-add10-clamp1",
                                       "mlp-site3-add10-clamp0.2"),
        }
        rows = []
        for (kind, sites, sigma), names in groups.items():
            sites = None if sites is None else list(sites)
            noise = {"kind": kind, "sigma": sigma, "sites": sites}
            for name in names:
                run, w = BY_NAME[name], weight_stats(self.model(name))
                rows.append({"model": name, "train_noise": _describe(run.noise), "clamp": _clamp(run.clamp),
                             "eval_noise": _describe(noise), "max_abs_weight": w["max_abs"],
                             "mean_abs_weight": w["mean_abs"], "acc_at_eval_sigma": self.at_sigma(name, noise)["mean"],
                             "mu": self.curve(name, kind, sites=sites)["midpoint"]["mu"],
                             **{f"mean_abs_{k}": v["mean_abs"] for k, v in w["layers"].items()},
                             **{f"max_abs_{k}": v["max_abs"] for k, v in w["layers"].items()}})
        self.save_table("weights", rows)
        return rows

    def binarisation(self) -> list[dict[str, Any]]:
        import matplotlib.pyplot as plt

        names = ("mlp", "mlp-mul0.5", "mlp-mul1.0")
        fig, axes = plt.subplots(len(names), 4, figsize=(15, 3.0 * len(names)))
        rows = []
        x = self.test.x[:2000]
        for i, name in enumerate(names):
            model = self.model(name)
            acts: list[torch.Tensor] = []
            handles = [m.register_forward_hook(lambda _m, _i, o, into=acts: into.append(o.detach()))
                       for m in model.modules() if isinstance(m, nn.ReLU)]
            with torch.no_grad():
                model(x)
            for h in handles:
                h.remove()
            for j, a in enumerate(acts[:3]):
                on = a.flatten().numpy()
                zero = float(np.mean(on == 0))
                on = on[on > 0] / on[on > 0].mean()
                bc = bimodality(on)
                axes[i, j].hist(on, bins=120, density=True, color="tab:blue")
                axes[i, j].set_title(f"{name}: hidden {j + 1} (> 0: {1 - zero:.0%}), BC {bc:.2f}", fontsize=9)
                rows.append({"model": name, "what": f"hidden {j + 1} activations > 0 (/ mean)", "zero_fraction": zero,
                             "bimodality": bc})
            weights = [m.weight.detach().flatten().numpy() for m in model.modules() if isinstance(m, nn.Linear)]
            w = weights[1]
            axes[i, 3].hist(w, bins=120, density=True, color="tab:orange")
            axes[i, 3].set_title(f"{name}: weights of layer 2, BC {bimodality(w):.2f}", fontsize=9)
            rows += [{"model": name, "what": f"weights layer {k + 1}", "zero_fraction": None,
                      "bimodality": bimodality(v)} for k, v in enumerate(weights)]
        fig.suptitle("MLP trained clean vs with multiplicative noise: bimodality coefficient BC > 0.555 suggests "
                     "two modes", fontsize=10)
        save_figure(fig, self.out / "binarisation_histograms.png")
        self.save_table("binarisation", rows)
        return rows


def _describe(noise: dict[str, Any] | None) -> str:
    if noise is None:
        return "none"
    where = "every site" if noise.get("sites") is None else f"site {noise['sites']}"
    return f"{noise['kind']} {noise['sigma']:g} at {where}"


def _clamp(clamp: tuple[float, float] | None) -> str:
    return "" if clamp is None else f"[{clamp[0]:g}, {clamp[1]:g}]"


def bimodality(values: np.ndarray) -> float:
    """Sarle's bimodality coefficient (skew^2 + 1) / (excess kurtosis + 3(n-1)^2/((n-2)(n-3)))."""
    n = len(values)
    g, k = stats.skew(values), stats.kurtosis(values)
    return float((g * g + 1) / (k + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    study = Study(args)
    started = time.perf_counter()
    summary = {"global_mu": study.global_mu(), "site_profiles": study.site_profiles(),
               "noisy_training": study.noisy_training(), "weights": study.weights(),
               "binarisation": study.binarisation()}
    summary["settings"] = {k: v for k, v in vars(args).items()}
    summary["test_samples"] = len(study.test)
    summary["seconds_this_call"] = time.perf_counter() - started
    atomic_write_json(study.out / "study.json", summary)
    print(json.dumps({k: summary[k] for k in ("global_mu", "noisy_training", "weights")}, indent=1, default=str))


if __name__ == "__main__":
    main()
