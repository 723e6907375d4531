"""Study (issue 14): latency reached at a target of 25% of the original and the accuracy lost, for
joint vs pruning-only vs quantisation-only search and DDPG vs random and greedy at equal evaluations,
over seeds.

Each (agent, mode, seed) is one ``nora compress`` search folder under ``--work``; a folder that is
already finished is read, an unfinished one resumes, so the study can be run in pieces. All searches
on one backend share one latency cache (copied in before and merged back after each search), so a
layer configuration has the same measured latency for every agent.

    python benchmarks/study_compress.py --checkpoint runs/cifar10-resnet8 --data-root ../shared/data/cifar10 \
        --name resnet8-cifar10 --episodes 60 --seeds 0 1
    python benchmarks/study_compress.py --checkpoint runs/mnist-lenet5 --data-root ../shared/data/mnist \
        --name lenet5-mnist --episodes 60 --seeds 0 1
Writes <output>/study_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from nora.report.files import save
from nora.workflows.compression import compress
from nora.io import atomic_write_json, atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root")
    p.add_argument("--name", required=True)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--target", type=float, default=0.25)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--ddpg-warmup", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs", nargs="+", default=["ddpg:joint", "random:joint", "greedy:joint", "ddpg:prune",
                                                 "ddpg:quant"], help="agent:mode pairs")
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--retrain-samples", type=int, default=5000)
    p.add_argument("--work", default="runs/study-compress")
    p.add_argument("--output", default="benchmarks/results/issue14")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting new searches after this long")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work) / args.name
    shared = work / f"latency-cache-{args.backend}.json"
    started = time.perf_counter()
    load_before = os.getloadavg()
    finished = {}
    for run in args.runs:
        agent, mode = run.split(":")
        for seed in args.seeds:
            folder = work / f"{agent}-{mode}-s{seed}"
            if (folder / "result.json").exists():
                finished[(agent, mode, seed)] = json.loads((folder / "result.json").read_text())
                continue
            if time.perf_counter() - started > args.budget_s:
                print(f"budget spent; {folder} not started (run again to continue)")
                continue
            folder.mkdir(parents=True, exist_ok=True)
            if shared.exists() and not (folder / "latency-cache.json").exists():
                shutil.copy(shared, folder / "latency-cache.json")
            t = time.perf_counter()
            report = compress(args.checkpoint, folder, agent=agent, mode=mode, target=args.target,
                              episodes=args.episodes, backend=args.backend, ddpg_warmup=args.ddpg_warmup,
                              eval_samples=args.eval_samples, retrain_epochs=args.retrain_epochs,
                              retrain_samples=args.retrain_samples, data_root=args.data_root, seed=seed)
            save(report)  # result.json marks the search as done for the next call
            result = report.data
            _merge(shared, folder / "latency-cache.json")
            finished[(agent, mode, seed)] = result
            f = result["final"]
            print(f"{agent:6s} {mode:5s} seed {seed}: latency x{f['latency_ratio']:.3f} "
                  f"acc {f['reference_test_accuracy']:.4f} -> {f['test_accuracy_before_retraining']:.4f} -> "
                  f"{f['test_accuracy']:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)
    rows = []
    for run in args.runs:
        agent, mode = run.split(":")
        done = [finished[(agent, mode, s)] for s in args.seeds if (agent, mode, s) in finished]
        if not done:
            continue

        def stat(key, results=done):
            values = [r["final"][key] for r in results]
            return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

        ratio, acc_before, acc = stat("latency_ratio"), stat("test_accuracy_before_retraining"), stat("test_accuracy")
        reference = done[0]["final"]["reference_test_accuracy"]
        best_search = [max(e["reward"] for e in json.loads((Path(r["out"]) / "episodes.json").read_text()))
                       for r in done]
        rows.append({"agent": agent, "mode": mode, "seeds": len(done), "latency_ratio": ratio,
                     "met_target": sum(r["final"]["met_target"] for r in done), "reference_accuracy": reference,
                     "accuracy_before_retraining": acc_before, "accuracy": acc,
                     "accuracy_lost": (reference - acc[0], acc[1]),
                     "best_reward": (statistics.fmean(best_search),
                                     statistics.stdev(best_search) if len(best_search) > 1 else 0.0),
                     "kernels": done[0]["final"]["kernels"],
                     "estimated_layers": sum(len(r["final"]["estimated"]) for r in done),
                     "search_s": statistics.fmean(r["final"]["search_s"] for r in done)})
    load_after = os.getloadavg()
    md = [f"{args.name}: target {args.target}, {args.episodes} episodes per search, latency on {args.backend}, "
          f"seeds {args.seeds}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}", "",
          "| agent | mode | seeds | latency / original | met target | test acc (orig) | compressed | retrained | "
          "acc lost | best reward | search s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['agent']} | {r['mode']} | {r['seeds']} | {r['latency_ratio'][0]:.3f} ± {r['latency_ratio'][1]:.3f} "
                  f"| {r['met_target']}/{r['seeds']} | {r['reference_accuracy']:.4f} | "
                  f"{r['accuracy_before_retraining'][0]:.4f} ± {r['accuracy_before_retraining'][1]:.4f} | "
                  f"{r['accuracy'][0]:.4f} ± {r['accuracy'][1]:.4f} | {r['accuracy_lost'][0]:+.4f} | "
                  f"{r['best_reward'][0]:.3f} ± {r['best_reward'][1]:.3f} | {r['search_s']:.0f} |")
    text = "\n".join(md) + "\n"
    print(text)
    out = Path(args.output)
    atomic_write_json(out / f"study_{args.name}.json", {"args": vars(args), "rows": rows, "load_before": load_before,
                                                       "load_after": load_after,
                                                       "when": time.strftime("%Y-%m-%d %H:%M:%S")})
    atomic_write_text(out / f"study_{args.name}.md", text)


def _merge(shared: Path, cache: Path) -> None:
    """Fold a search's measured configurations into the study's shared cache."""
    if not cache.exists():
        return
    data = json.loads(cache.read_text())
    if shared.exists():
        old = json.loads(shared.read_text())
        if old.get("host") == data.get("host"):
            data["entries"] = {**old["entries"], **data["entries"]}
    atomic_write_json(shared, data)


if __name__ == "__main__":
    main()
