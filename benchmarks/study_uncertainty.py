"""Issue 13 study: repulsive last-layer ensembles vs baselines on MNIST, Fashion-MNIST as OOD.

For each method and seed: train LeNet-5 variants on MNIST with the same loop, then score the test set
clean, under Gaussian pixel-noise shift (severities 1..5), and under additive hardware noise at every
site (R realisations per sigma, through the measurement engine), with Fashion-MNIST test images as
the OOD set. Tables report mean +- std over seeds. ``--active`` instead runs the active-learning
comparison (epistemic vs aleatoric vs random acquisition) on an MNIST pool, and ``--cifar``
calibration under Gaussian-noise and blur shift on CIFAR-10 (``--backbone resnet8`` builds every method
from the zoo ResNet-8; resumable from its ``.partial.json``).

    python benchmarks/study_uncertainty.py --data ../shared/data --epochs 3 --seeds 0 1 2
    python benchmarks/study_uncertainty.py --data ../shared/data --active --seeds 0 1 2
    python benchmarks/study_uncertainty.py --data ../shared/data --cifar --methods single multihead repulsive-augment
    python benchmarks/study_uncertainty.py --data ../shared/data --cifar --backbone resnet8 --seeds 0 1 --epochs 10 \
        --methods single mc-dropout multihead repulsive-augment ensemble --train-subset 20000 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

M = 5
METHODS = {
    "single": ("lenet5", {}, "cross_entropy", {}),
    "mc-dropout": ("mcdropout", {"samples": 10, "p": 0.5}, "heads_nll", {}),
    "multihead": ("multihead", {"heads": M}, "heads_nll", {}),
    "repulsive-augment": ("multihead", {"heads": M}, "repulsive", {"weight": 0.1}),
    "repulsive-augment-sge": ("multihead", {"heads": M}, "repulsive", {"weight": 0.1, "estimator": "sge"}),
    "repulsive-train": ("multihead", {"heads": M}, "repulsive", {"weight": 0.1, "repulsion_set": "train"}),
    "repulsive-ood-exposed": ("multihead", {"heads": M}, "repulsive",
                              {"weight": 0.1, "repulsion_set": "ood:fashion-mnist"}),
    "ensemble": ("ensemble", {"members": M}, "heads_nll", {}),
}
KEYS = ("accuracy", "nll", "brier", "ece", "epistemic", "auroc_entropy", "auroc_mi", "aupr_mi", "ood_epistemic")


def _ms(values):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def study(args) -> None:
    from nora.config import NoiseConfig
    from nora.data import load_dataset
    from nora.train.objectives import make_objective
    from nora.uncertainty.evaluate import evaluate_uncertainty
    from nora.uncertainty.fit import build_seeded, fit

    data = Path(args.data)
    train = load_dataset("mnist", "train", root=data / "mnist")
    train = train.subset(args.train_subset) if args.train_subset else train
    test = load_dataset("mnist", "test", root=data / "mnist").subset(args.test_subset)
    ood = load_dataset("fashion-mnist", "test", root=data / "fashion-mnist").subset(args.test_subset)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for name in args.methods:
            arch, kwargs, objective, options = METHODS[name]
            if objective == "repulsive" and args.weight is not None:
                options = {**options, "weight": args.weight}
            if objective == "repulsive" and args.repulsion_batch is not None:
                options = {**options, "batch_size": args.repulsion_batch}
            if "ood:" in str(options.get("repulsion_set", "")):
                options = {**options, "root": str(data / "fashion-mnist")}
            model = build_seeded(arch, seed, **kwargs)
            obj = make_objective(objective, **({**options, "seed": seed} if objective == "repulsive" else options))
            seconds = fit(model, obj, train, epochs=args.epochs, batch_size=128, seed=seed)
            report = evaluate_uncertainty(model, test.x, test.y, ood_x=ood.x, ood_name="fashion-mnist",
                                          shifts=[("gaussian-noise", [1, 3, 5])], noise_cfg=NoiseConfig(kind="additive"),
                                          sigmas=args.sigmas, repeats=args.repeats, seed=seed)
            rows = [{k: v for k, v in r.items() if k != "reliability"} for r in report.rows]
            results.append({"method": name, "seed": seed, "epoch_seconds": seconds,
                            "parameters": sum(p.numel() for p in model.parameters()), "rows": rows,
                            "reliability": report.rows[0]["reliability"]})
            (out / "partial.json").write_text(json.dumps(results))  # a killed study keeps what it measured
            clean = rows[0]
            print(f"seed {seed} {name:24s} acc {clean['accuracy']:.4f} ece {clean['ece']:.4f} "
                  f"auroc MI {clean['auroc_mi']:.3f} H {clean['auroc_entropy']:.3f} "
                  f"({sum(seconds):.0f} s train)", flush=True)
    (out / "partial.json").unlink()
    load = os.getloadavg()
    meta = {"epochs": args.epochs, "train_samples": len(train), "test_samples": len(test), "seeds": args.seeds,
            "sigmas": args.sigmas, "repeats": args.repeats, "load_average": list(load), "heads": M}
    (out / "study.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    write_tables(results, meta, out)
    plot(results, out)


def write_tables(results, meta, out: Path) -> None:
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = [f"MNIST ({meta['train_samples']} train, {meta['epochs']} epochs; {meta['test_samples']} test), "
             f"Fashion-MNIST test as OOD; mean ± std over seeds {meta['seeds']}; M = {meta['heads']}; "
             f"load average {meta['load_average'][0]:.1f}", "",
             "| method | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for m in methods:
        clean = [r["rows"][0] for r in results if r["method"] == m]
        lines.append(f"| {m} | " + " | ".join(_ms([c[k] for c in clean]) for k in KEYS) + " |")
    lines += ["", "Gaussian pixel-noise shift: ECE / accuracy / epistemic at severity 1, 3, 5", "",
              "| method | ECE s1 | ECE s3 | ECE s5 | acc s5 | epistemic s5 |", "|---|---|---|---|---|---|"]
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        shift = lambda s, k: _ms([next(x[k] for x in r["rows"] if x["kind"] == "shift" and x["severity"] == s) for r in runs])
        lines.append(f"| {m} | {shift(1, 'ece')} | {shift(3, 'ece')} | {shift(5, 'ece')} | {shift(5, 'accuracy')} | "
                     f"{shift(5, 'epistemic')} |")
    lines += ["", "Additive noise at every site (mean over realisations, then over seeds): accuracy, ECE, "
              "epistemic (in-distribution), OOD AUROC from MI, flag = MI AUROC for inputs noise breaks", "",
              "| method | sigma | accuracy | ece | epistemic | auroc_mi | flag_auroc |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        for sigma in meta["sigmas"]:
            pick = [next(x for x in r["rows"] if x["kind"] == "noise" and x["sigma"] == sigma) for r in runs]
            lines.append(f"| {m} | {sigma:g} | " + " | ".join(_ms([p[k] for p in pick]) for k in
                                                             ("accuracy", "ece", "epistemic", "auroc_mi", "flag_auroc")) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results, out: Path) -> None:
    from nora.analysis.plots import new_figure, save_figure

    methods = list(dict.fromkeys(r["method"] for r in results))
    fig = new_figure((12, 3.8))
    axes = fig.subplots(1, 3)
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        noise = lambda k: [statistics.fmean(x[k] for r in runs for x in r["rows"] if x["kind"] == "noise" and x["sigma"] == s)
                           for s in sigmas]
        sigmas = sorted({x["sigma"] for x in runs[0]["rows"] if x["kind"] == "noise"})
        clean = lambda k: statistics.fmean(r["rows"][0][k] for r in runs)
        axes[0].plot([0, *sigmas], [clean("epistemic"), *noise("epistemic")], "o-", label=m)
        axes[1].plot([0, *sigmas], [clean("ece"), *noise("ece")], "o-", label=m)
        axes[2].plot([0, *sigmas], [clean("auroc_mi"), *noise("auroc_mi")], "o-", label=m)
    for ax, title in zip(axes, ("epistemic (MNIST test)", "ECE", "OOD AUROC (mutual information)")):
        ax.set_xlabel("additive sigma at every site")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "noise.png")


def active(args) -> None:
    from nora.data import load_dataset
    from nora.uncertainty.active import active_learning, plot_curves

    data = Path(args.data)
    pool = load_dataset("mnist", "train", root=data / "mnist").subset(args.pool)
    test = load_dataset("mnist", "test", root=data / "mnist").subset(2000)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    started = time.perf_counter()
    for seed in args.seeds:
        curves[seed] = active_learning(pool, test, model_kwargs={"heads": M}, objective="repulsive",
                                       objective_options={"weight": args.al_weight, "seed": seed}, initial=20,
                                       per_round=20, rounds=args.rounds, steps=300, batch_size=32, lr=2e-3, seed=seed)
        print(f"seed {seed}: " + "; ".join(f"{k} {[round(r['accuracy'], 3) for r in v]}" for k, v in curves[seed].items()),
              flush=True)
    mean = {k: [{"labelled": r["labelled"], "accuracy": statistics.fmean(curves[s][k][i]["accuracy"] for s in args.seeds),
                 "std": statistics.stdev([curves[s][k][i]["accuracy"] for s in args.seeds]) if len(args.seeds) > 1 else 0.0}
                for i, r in enumerate(curves[args.seeds[0]][k])] for k in curves[args.seeds[0]]}
    (out / "active.json").write_text(json.dumps({"seeds": args.seeds, "pool": len(pool), "curves": curves,
                                                 "mean": mean, "seconds": time.perf_counter() - started,
                                                 "load_average": list(os.getloadavg())}, indent=1))
    plot_curves(mean, out / "active.png", title=f"MNIST active learning ({len(args.seeds)} seeds, mean)")
    lines = ["| labelled | " + " | ".join(mean) + " |", "|---" * (len(mean) + 1) + "|"]
    for i, r in enumerate(next(iter(mean.values()))):
        lines.append(f"| {r['labelled']} | " + " | ".join(f"{mean[k][i]['accuracy']:.4f} ± {mean[k][i]['std']:.4f}"
                                                         for k in mean) + " |")
    (out / "active.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


CIFAR_SHIFTS = (("gaussian-noise", (1, 3, 5)), ("blur", (1, 3, 5)))


def _on_backbone(name: str, backbone: str) -> tuple[str, dict, str, dict]:
    """A method's (arch, kwargs, objective, options) with every network built from ``backbone``."""
    arch, kwargs, objective, options = METHODS[name]
    if arch == "lenet5":
        arch = backbone
    elif arch == "ensemble":
        kwargs = {**kwargs, "member": backbone}
    else:
        kwargs = {**kwargs, "backbone": backbone}
    return arch, {**kwargs, "input_shape": [3, 32, 32]}, objective, options


def cifar(args) -> None:
    """Calibration under shift on CIFAR-10 (Gaussian pixel noise and blur, severities 1, 3, 5).

    Resumable: after every (seed, method) the results so far go to ``<stem>.partial.json``; a restart
    with the same arguments skips what is already there, so a killed study keeps what it measured.
    """
    from nora.data import load_dataset
    from nora.train.objectives import make_objective
    from nora.uncertainty.evaluate import evaluate_uncertainty
    from nora.uncertainty.fit import build_seeded, fit

    root = Path(args.data) / "cifar10"
    train = load_dataset("cifar10", "train", root=root).subset(args.train_subset or 50000)
    test = load_dataset("cifar10", "test", root=root).subset(args.test_subset)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stem = "cifar10" if args.backbone == "lenet5" else f"cifar10_{args.backbone}"
    config = {"backbone": args.backbone, "epochs": args.epochs, "train_samples": len(train),
              "test_samples": len(test), "heads": M, "weight": args.weight, "repulsion_batch": args.repulsion_batch}
    partial = out / f"{stem}.partial.json"
    results, load_start = [], list(os.getloadavg())
    if partial.exists():
        saved = json.loads(partial.read_text())
        if saved["config"] != config:
            print(f"error: {partial} was written with {saved['config']}, not {config}; "
                  "delete it or rerun with those arguments", file=sys.stderr)
            raise SystemExit(2)
        results, load_start = saved["results"], saved["load_average_start"]
        print(f"resuming from {partial}: {len(results)} (seed, method) runs done", flush=True)
    done = {(r["seed"], r["method"]) for r in results}
    for seed in args.seeds:
        for name in args.methods:
            if (seed, name) in done:
                continue
            arch, kwargs, objective, options = _on_backbone(name, args.backbone)
            if objective == "repulsive" and args.weight is not None:
                options = {**options, "weight": args.weight}
            if objective == "repulsive" and args.repulsion_batch is not None:
                options = {**options, "batch_size": args.repulsion_batch}
            model = build_seeded(arch, seed, **kwargs)
            obj = make_objective(objective, **({**options, "seed": seed} if objective == "repulsive" else options))
            seconds = fit(model, obj, train, epochs=args.epochs, batch_size=128, seed=seed)
            started = time.perf_counter()
            report = evaluate_uncertainty(model, test.x, test.y, shifts=[(k, list(s)) for k, s in CIFAR_SHIFTS],
                                          shift_std=test.std, seed=seed)
            rows = [{k: v for k, v in r.items() if k != "reliability"} for r in report.rows]
            results.append({"method": name, "seed": seed, "epoch_seconds": seconds,
                            "eval_seconds": time.perf_counter() - started,
                            "parameters": sum(p.numel() for p in model.parameters()),
                            "load_average": list(os.getloadavg()), "rows": rows})
            partial.write_text(json.dumps({"config": config, "load_average_start": load_start, "results": results}))
            print(f"seed {seed} {name:24s} ({statistics.fmean(seconds):.1f} s/epoch) "
                  + "; ".join(f"{r['condition']}{r['severity'] or ''} acc {r['accuracy']:.3f} ece {r['ece']:.3f}"
                              for r in rows), flush=True)
    runs = [r for r in results if r["seed"] in args.seeds and r["method"] in args.methods]
    meta = {**config, "seeds": args.seeds, "load_average_start": load_start, "load_average": list(os.getloadavg()),
            "threads": args.threads, "torch": torch.__version__}
    (out / f"{stem}.json").write_text(json.dumps({**meta, "results": runs}, indent=1))
    write_cifar(runs, meta, out / f"{stem}.md")
    plot_cifar(runs, meta, out / f"{stem}.png")
    partial.unlink()


def write_cifar(results, meta, path: Path) -> None:
    conditions = [(r["condition"], r["severity"]) for r in results[0]["rows"]]
    methods = list(dict.fromkeys(r["method"] for r in results))
    header = ["| method | " + " | ".join(f"{c} {s}" if s else c for c, s in conditions) + " |",
              "|---" * (len(conditions) + 1) + "|"]
    title = (f"CIFAR-10, {meta['backbone']} ({meta['train_samples']} train, {meta['epochs']} epochs; "
             f"{meta['test_samples']} test); mean ± std over seeds {meta['seeds']}; M = {meta['heads']}; "
             f"load average {meta['load_average_start'][0]:.1f} at start, {meta['load_average'][0]:.1f} at end")
    lines = [title, "", "ECE", "", *header]
    cell = lambda runs, i, k: _ms([r["rows"][i][k] for r in runs])
    for key in ("ece", "accuracy", "nll"):
        if key != "ece":
            lines += ["", key.upper() if key == "nll" else "accuracy", "", *header]
        for m in methods:
            runs = [r for r in results if r["method"] == m]
            lines.append(f"| {m} | " + " | ".join(cell(runs, i, key) for i in range(len(conditions))) + " |")
    lines += ["", "Best calibrated (lowest mean ECE) per condition", "", "| condition | method | ECE |", "|---|---|---|"]
    for i, (c, s) in enumerate(conditions):
        mean = {m: statistics.fmean(r["rows"][i]["ece"] for r in results if r["method"] == m) for m in methods}
        best = min(mean, key=mean.get)
        lines.append(f"| {c} {s or ''} | {best} | {mean[best]:.4f} |")
    lines += ["", "Training cost (same run, same threads)", "", "| method | s/epoch | x single | parameters |",
              "|---|---|---|---|"]
    per_epoch = {m: statistics.fmean(s for r in results if r["method"] == m for s in r["epoch_seconds"]) for m in methods}
    for m in methods:
        params = next(r["parameters"] for r in results if r["method"] == m)
        ratio = f"{per_epoch[m] / per_epoch['single']:.2f}" if "single" in per_epoch else "-"
        lines.append(f"| {m} | {per_epoch[m]:.1f} | {ratio} | {params:,} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot_cifar(results, meta, path: Path) -> None:
    """ECE vs severity (0 = clean) per shift kind and method: mean over seeds, error bar = std."""
    from nora.analysis.plots import new_figure, save_figure

    fig = new_figure((10, 3.8))
    axes = fig.subplots(1, len(CIFAR_SHIFTS), sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in results))
    for ax, (kind, severities) in zip(axes, CIFAR_SHIFTS):
        for j, m in enumerate(methods):
            runs = [r for r in results if r["method"] == m]
            per_seed = [[next(x["ece"] for x in r["rows"] if x["condition"] == ("clean" if s == 0 else kind)
                              and x["severity"] == s) for r in runs] for s in (0, *severities)]
            mean = [statistics.fmean(v) for v in per_seed]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_seed]
            xs = [s + 0.06 * (j - (len(methods) - 1) / 2) for s in (0, *severities)]  # dodge the error bars
            ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=m)
        ax.set_xticks([0, *severities], ["clean", *map(str, severities)])
        ax.set_xlabel(f"{kind} severity")
        ax.set_title(f"CIFAR-10 {meta['backbone']}: ECE under {kind}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"ECE (mean ± std over {len(meta['seeds'])} seeds)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder holding mnist/ and fashion-mnist/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=5000)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--active", action="store_true", help="run the active-learning comparison instead")
    parser.add_argument("--cifar", action="store_true", help="run the CIFAR-10 calibration-under-shift study instead")
    parser.add_argument("--backbone", default="lenet5",
                        help="--cifar: zoo network every method is built from (e.g. resnet8; default lenet5)")
    parser.add_argument("--pool", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--weight", type=float, help="repulsion weight of every repulsive method (default 0.1)")
    parser.add_argument("--repulsion-batch", type=int, help="repulsion inputs per step (objective default: 8)")
    parser.add_argument("--al-weight", type=float, default=0.1, help="repulsion weight in the active-learning models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", metavar="JSON",
                        help="only rebuild tables and plots from a saved study.json / partial.json")
    parser.add_argument("--output", default="benchmarks/results/issue13")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        results = saved["results"] if isinstance(saved, dict) else saved
        meta = {"epochs": args.epochs, "train_samples": args.train_subset or 60000, "test_samples": args.test_subset,
                "seeds": sorted({r["seed"] for r in results}), "sigmas": args.sigmas, "heads": M,
                "load_average": list(os.getloadavg()), **(saved if isinstance(saved, dict) else {})}
        meta.pop("results", None)
        out = Path(args.output)
        (out / "study.json").write_text(json.dumps({**meta, "results": results}, indent=1))
        write_tables(results, meta, out)
        plot(results, out)
        return
    (active if args.active else cifar if args.cifar else study)(args)


if __name__ == "__main__":
    main()
