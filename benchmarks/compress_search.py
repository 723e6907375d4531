"""Where a compression search spends its time, and how often the compile cache saves a compilation.

Runs one search (default: DDPG, joint, 30 episodes) on a checkpoint and reports the wall time per
episode split into compress (pruning + fake-quantisation setup), evaluation (validation accuracy),
compilation, timing (warm-up + timed rounds), other latency bookkeeping and the agent; the
one-off sensitivity analysis and reference measurement; and the latency-cache hit rate over the
episodes (a fresh folder, so every configuration is compiled once).

    python benchmarks/compress_search.py --checkpoint runs/cifar10-resnet8 --backend onnxruntime --episodes 30
    python benchmarks/compress_search.py --checkpoint runs/mnist-lenet5 --backend tvm --episodes 30
Writes <output>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch

from nora.compress.workflow import compress
from nora.io import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--agent", default="ddpg")
    p.add_argument("--mode", default="joint")
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--eval-samples", type=int, default=1000)
    p.add_argument("--output", default="benchmarks/results/issue14/compress_search")
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="compress-bench-")
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        result = compress(args.checkpoint, folder, agent=args.agent, mode=args.mode, episodes=args.episodes,
                          backend=args.backend, eval_samples=args.eval_samples, ddpg_warmup=min(10, args.episodes // 3),
                          retrain_epochs=0, data_root=args.data_root)
        wall = time.perf_counter() - start
        import json
        from pathlib import Path

        episodes = json.loads((Path(folder) / "episodes.json").read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    parts = {k: statistics.fmean(e["seconds"][k] for e in episodes) for k in episodes[0]["seconds"]}
    per_episode = result["final"]["search_s"] / len(episodes)
    print(f"{args.backend}, {args.agent}, {args.mode}: {len(episodes)} episodes, {per_episode:.3f} s per episode "
          f"(load average {load_before[0]:.2f})")
    for key, value in parts.items():
        print(f"  {key:14s} {value:.4f} s  ({value / per_episode:.0%})")
    reference = result["reference"]
    print(f"  one-off: sensitivity {reference['sensitivity_s']:.2f} s, reference measurement {reference['seconds']:.2f} s")
    print(f"  latency-cache hit rate over the search {result['final']['cache_hit_rate']:.1%}")
    atomic_write_json(f"{args.output}-{args.backend}.json", {
        "checkpoint": args.checkpoint, "backend": args.backend, "agent": args.agent, "mode": args.mode,
        "episodes": len(episodes), "per_episode_s": per_episode, "parts_s": parts, "wall_s": wall,
        "sensitivity_s": reference["sensitivity_s"], "reference_s": reference["seconds"],
        "cache_hit_rate": result["final"]["cache_hit_rate"], "load_before": load_before,
        "load_after": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    main()
