"""Study: noisy training (NT) against variance-aware noisy training (VANT) on real data.

    nice -n 5 python benchmarks/study_vant.py --data-root ../shared/data [--epochs-cifar 6 --epochs-mnist 3]

For each data set (CIFAR-10 and MNIST, LeNet-5 with average pooling, additive noise at every site):

1. train a clean model and measure its accuracy over a log grid of inference sigmas; its midpoint
   noise level mu (accuracy halfway between clean and chance) picks the two training sigmas,
   mu and 2 mu rounded to one decimal, where noisy training is clearly hurt but still trains;
2. train NT (linear warm-up over the first quarter of the epochs, then constant sigma_train) and
   VANT (same warm-up, then sigma_i = alpha sigma_train + theta |z_i| per sample, alpha 0.45 and theta
   from the research table) at both sigmas, same seed, same epochs;
3. evaluate every model clean, under the inference-sigma distribution lognormal(mean sigma_train,
   std sigma_train / 2) (robustness = mean accuracy / clean accuracy), over a grid of inference sigmas
   (the sigma_train x sigma_inf matrix), and along two dynamic trajectories (power-law drift with
   per-sample jitter; an Arrhenius temperature cycle).

Evaluations use every second test image (5,000, all classes); the per-epoch training log uses all
10,000. Runs resume (checkpoints under --runs) and every model's evaluation is cached as JSON under --out,
so a killed study continues where it stopped. Writes <out>/study.json, <out>/study.md (the tables)
and the plots.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nora.analysis.plots import accuracy_vs_sigma, heatmap
from nora.analysis.robustness import accuracy_matrix, evaluate_robustness, parse_sigma_dist
from nora.config import parse_config
from nora.dynamic import evaluate_trajectory, parse_trajectory
from nora.dynamic.plots import trajectory_plot
from nora.io import atomic_write_json, atomic_write_text
from nora.measure import Engine, clean_accuracy
from nora.noise import GaussianAdditive
from nora.sim import NoiseSpec
from nora.train import train
from nora.train.setup import load_data

DATASETS = {
    "cifar10": {"folder": "cifar10", "augment": "cifar"},
    "mnist": {"folder": "mnist", "augment": None},
}
CURVE_GRID = [0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0]
INFERENCE_FACTORS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]  # matrix columns, times mu


def base_config(dataset: str, args, name: str, epochs: int, noise: dict | None, schedule: dict | None):
    info = DATASETS[dataset]
    train_cfg: dict[str, Any] = {"epochs": epochs, "lr": 1e-3, "scheduler": "cosine", "progress": False,
                                 "threads": args.threads}
    if schedule:
        train_cfg["noise_schedule"] = schedule
    return parse_config({
        "name": name,
        "output_dir": str(Path(args.runs) / dataset),
        "seed": args.seed,
        "data": {"dataset": dataset, "root": str(Path(args.data_root) / info["folder"]), "batch_size": 128,
                 "test_batch_size": 1000, "augment": info["augment"], "train_subset": args.train_subset},
        "model": {"arch": "lenet5", "kwargs": {"pool": "avg"}},
        "train": train_cfg,
        "train_noise": noise,
    }, f"study {name}")


def midpoint(rows: list[dict], clean: float, chance: float) -> float:
    """Linear interpolation in log10(sigma) at the accuracy halfway between clean and chance."""
    target = (clean + chance) / 2
    for lo, hi in zip(rows, rows[1:]):
        if lo["mean"] >= target > hi["mean"]:
            f = (lo["mean"] - target) / (lo["mean"] - hi["mean"])
            return float(10 ** (np.log10(lo["sigma"]) + f * (np.log10(hi["sigma"]) - np.log10(lo["sigma"]))))
    raise SystemExit(f"the clean model's accuracy never crosses {target:.3f} on the grid; widen CURVE_GRID")


def trajectories(sigma: float, seed: int) -> dict[str, Any]:
    """Two dynamic processes scaled to the training sigma."""
    drift = parse_trajectory({
        "name": "power-law-drift", "time_unit": "s",
        "times": {"start": 1, "stop": 1e5, "num": 6, "spacing": "log"},
        "process": {"kind": "power_law", "sigma0": round(0.6 * sigma, 4), "t0": 1, "nu": 0.1},
        "jitter": {"per": "sample", "distribution": "lognormal", "spread": 0.25},
        "repeats": 2, "seed": seed,
    }, "power-law drift")
    temps = [300, 320, 340, 360, 340, 320]
    temperature = parse_trajectory({
        "name": "temperature-cycle", "time_unit": "h", "times": list(range(len(temps))),
        "process": {"kind": "temperature", "law": "arrhenius", "sigma_ref": round(0.8 * sigma, 4),
                    "temperature_ref": 300, "activation_energy": 0.1, "temperatures": temps},
        "repeats": 2, "seed": seed,
    }, "temperature cycle")
    return {"drift": drift, "temperature": temperature}


def _engine(model, test, args, repeats=None, seed=None) -> Engine:
    return Engine(model, test.x, test.y, NoiseSpec(activation=GaussianAdditive(0.0)),
                  seed=args.seed if seed is None else seed, repeats=repeats or args.repeats)


def evaluate_at(model, test, sigma_ref: float, args) -> dict[str, Any]:
    """Clean accuracy, robustness under lognormal(sigma_ref, sigma_ref/2), and both trajectories."""
    dist = parse_sigma_dist(f"lognormal:{sigma_ref},{sigma_ref / 2}")
    with _engine(model, test, args) as engine:
        result = {"clean": engine.clean, "robustness": evaluate_robustness(engine, dist, nodes=args.nodes),
                  "dynamic": {}}
    for key, trajectory in trajectories(sigma_ref, args.seed).items():
        with _engine(model, test, args, trajectory.repeats, trajectory.seed) as engine:
            result["dynamic"][key] = {"describe": trajectory.describe(), "rows": evaluate_trajectory(engine, trajectory)}
    return result


def curve_on(model, test, grid: list[float], args) -> list[dict[str, Any]]:
    with _engine(model, test, args) as engine:
        return engine.summary(grid)


def cached(path: Path, compute) -> Any:
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_json(path, value)
    return value


def study_dataset(dataset: str, epochs: int, args, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    clean_cfg = base_config(dataset, args, f"{dataset}-clean", epochs, None, None)
    _, test = load_data(clean_cfg.data)
    # Every k-th test image: image-folder CIFAR-10 is sorted by class, so the first N would drop classes.
    test = test.subset(range(0, len(test), args.eval_stride))
    chance = 1.0 / test.num_classes

    clean_run = train(clean_cfg)
    curve = cached(out / f"{dataset}-clean-curve.json", lambda: {
        "clean": clean_accuracy(clean_run.model, test.x, test.y),
        "rows": curve_on(clean_run.model, test, CURVE_GRID, args)})
    mu = midpoint(curve["rows"], curve["clean"], chance)
    sigmas = sorted({max(0.1, round(mu, 1)), max(0.2, round(2 * mu, 1))})
    grid = sorted({float(f"{f * mu:.2g}") for f in INFERENCE_FACTORS})
    print(f"[{dataset}] clean {curve['clean']:.4f}, midpoint mu {mu:.3f} -> sigma_train {sigmas}", flush=True)

    warmup = max(1, epochs // 4)
    models: dict[str, dict[str, Any]] = {}
    for sigma in sigmas:
        for method, schedule in (("NT", {"name": "warmup", "warmup_epochs": warmup}),
                                 ("VANT", {"name": "vant", "warmup_epochs": warmup})):
            name = f"{dataset}-{method.lower()}-{sigma:g}"
            cfg = base_config(dataset, args, name, epochs, {"kind": "additive", "sigma": sigma, "sites": "all"}, schedule)
            run = train(cfg)
            evaluation = cached(out / f"{name}.json",
                                lambda: {**evaluate_at(run.model, test, sigma, args), "curve": curve_on(run.model, test, grid, args)})
            models[name] = {"method": method, "sigma_train": sigma, "epochs": epochs,
                            "train_seconds": sum(m["seconds"] for m in run.metrics), **evaluation}
            print(f"[{dataset}] {name}: clean {evaluation['clean']:.4f}, "
                  f"robustness {100 * evaluation['robustness']['robustness']:.1f}%", flush=True)
    clean_eval = {sigma: cached(out / f"{dataset}-clean-at-{sigma:g}.json", lambda: evaluate_at(clean_run.model, test, sigma, args))
                  for sigma in sigmas}
    clean_grid = cached(out / f"{dataset}-clean-grid.json", lambda: curve_on(clean_run.model, test, grid, args))
    plots(dataset, out, models, clean_eval, clean_grid, grid, chance)
    return {"dataset": dataset, "epochs": epochs, "warmup_epochs": warmup, "mu_clean": mu, "sigmas": sigmas,
            "grid": grid, "clean_curve": curve, "clean_grid": clean_grid, "models": models,
            "clean_model": {f"{s:g}": v for s, v in clean_eval.items()},
            "wall_seconds": time.perf_counter() - started}


def plots(dataset: str, out: Path, models: dict, clean_eval: dict, clean_grid: list, grid: list[float], chance: float) -> None:
    rows = {"clean (sigma_train 0)": clean_grid, **{
        f"{m['method']} {m['sigma_train']:g}": m["curve"] for m in models.values()}}
    heatmap(accuracy_matrix(list(rows.values())), list(rows), grid, out / f"{dataset}-matrix.png",
            row_title="method, sigma_train", col_title="inference sigma",
            title=f"{dataset}: accuracy over sigma_train x sigma_inf (LeNet-5, additive noise)")
    accuracy_vs_sigma(rows, out / f"{dataset}-accuracy.png", chance=chance, title=f"{dataset}: NT vs VANT")
    for key in ("drift", "temperature"):
        for sigma in sorted({m["sigma_train"] for m in models.values()}):
            curves = {f"{m['method']}": m["dynamic"][key]["rows"] for m in models.values() if m["sigma_train"] == sigma}
            curves["clean-trained"] = clean_eval[sigma]["dynamic"][key]["rows"]
            trajectory_plot([], out / f"{dataset}-{key}-{sigma:g}.png", curves=curves, chance=chance,
                            time_unit="s" if key == "drift" else "h",
                            title=f"{dataset}, sigma_train {sigma:g}: {key}")


def markdown(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        ds = res["dataset"]
        lines += [f"### {ds}: LeNet-5 (avg pool), {res['epochs']} epochs, warm-up {res['warmup_epochs']}",
                  "",
                  f"Clean model: accuracy {res['clean_curve']['clean']:.4f}, midpoint noise level mu = {res['mu_clean']:.3f}; "
                  f"training sigmas {', '.join(f'{s:g}' for s in res['sigmas'])}.",
                  "",
                  "| model | sigma_train | clean acc | mean acc over lognormal(sigma_train, sigma_train/2) | robustness % (95% CI) |",
                  "|---|---|---|---|---|"]
        for sigma in res["sigmas"]:
            ce = res["clean_model"][f"{sigma:g}"]
            rob = ce["robustness"]
            lines.append(f"| clean-trained | 0 (evaluated at {sigma:g}) | {ce['clean']:.4f} | {rob['mean_accuracy']:.4f} | "
                         f"{100 * rob['robustness']:.1f} ({100 * rob['robustness_ci'][0]:.1f}-{100 * rob['robustness_ci'][1]:.1f}) |")
            for m in res["models"].values():
                if m["sigma_train"] != sigma:
                    continue
                rob = m["robustness"]
                lines.append(f"| {m['method']} | {sigma:g} | {m['clean']:.4f} | {rob['mean_accuracy']:.4f} | "
                             f"{100 * rob['robustness']:.1f} ({100 * rob['robustness_ci'][0]:.1f}-{100 * rob['robustness_ci'][1]:.1f}) |")
        grid = res["grid"]
        lines += ["", "Accuracy per inference sigma (rows: sigma_train; the heat map is "
                  f"`{ds}-matrix.png`):", "",
                  "| model | " + " | ".join(f"{s:g}" for s in grid) + " |", "|---|" + "---|" * len(grid)]
        lines.append("| clean | " + " | ".join(f"{r['mean']:.3f}" for r in res["clean_grid"]) + " |")
        for m in res["models"].values():
            lines.append(f"| {m['method']} {m['sigma_train']:g} | " + " | ".join(f"{r['mean']:.3f}" for r in m["curve"]) + " |")
        for key in ("drift", "temperature"):
            lines += ["", f"Dynamic: {key} ({next(iter(res['models'].values()))['dynamic'][key]['describe']} "
                      "at the first sigma_train; scaled with sigma_train):", ""]
            for sigma in res["sigmas"]:
                models = [m for m in res["models"].values() if m["sigma_train"] == sigma]
                rows0 = models[0]["dynamic"][key]["rows"]
                lines += [f"| sigma_train {sigma:g}: time | " + " | ".join(f"{r['time']:g}" for r in rows0) + " |",
                          "|---|" + "---|" * len(rows0),
                          "| nominal sigma | " + " | ".join(f"{r['sigma']:.3f}" for r in rows0) + " |"]
                ce = res["clean_model"][f"{sigma:g}"]["dynamic"][key]["rows"]
                lines.append("| clean-trained | " + " | ".join(f"{r['mean']:.3f}" for r in ce) + " |")
                for m in models:
                    lines.append(f"| {m['method']} | " + " | ".join(f"{r['mean']:.3f}" for r in m["dynamic"][key]["rows"]) + " |")
                lines.append("")
        lines.append(f"Study wall time for {ds}: {res['wall_seconds'] / 60:.1f} min.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="folder holding cifar10/ and mnist/")
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "mnist"], choices=list(DATASETS))
    parser.add_argument("--epochs-cifar", type=int, default=6)
    parser.add_argument("--epochs-mnist", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=12, help="quadrature nodes of the inference-sigma distribution")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=None, help="for a quick check of the script only")
    parser.add_argument("--eval-stride", type=int, default=2, help="evaluate on every k-th test image (2: 5,000 of 10,000)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/study_vant")
    parser.add_argument("--out", default="benchmarks/results/issue4")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = {"cifar10": args.epochs_cifar, "mnist": args.epochs_mnist}
    results = [study_dataset(ds, epochs[ds], args, out) for ds in args.datasets]
    atomic_write_json(out / "study.json", {"args": vars(args), "results": results})
    atomic_write_text(out / "study.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
