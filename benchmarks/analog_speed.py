"""Cost of nora's analog models against the clean model, measured in one run (ratios are load-robust).

* inference of LeNet-5 on the 10,000 MNIST test images: clean, PCM tile preset (programmed chip read
  at 1 hour: drift, 1/f read noise per forward, DAC/ADC, output noise), ordered MAC (natural order
  and the closed-form positive-first order), with the accuracies when ``--checkpoint`` gives weights;
* one training step (forward + backward, batch 128) clean, on the tile (hardware-aware) and on the
  ordered MAC.

    python benchmarks/analog_speed.py --data-root ../shared/data/mnist --checkpoint runs/mnist-lenet5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import nora.analog as A
from nora.data import load_dataset
from nora.measure import clean_accuracy
from nora.models import build_model
from nora.perf.latency import time_callable
from nora.seeds import SeedTree


def timed(fn, repeats: int) -> float:
    """Fastest of ``repeats`` single calls (nora's timer, one call per round, no extra warm-up)."""
    return time_callable(fn, warmup=0, repeats=repeats, number=1).best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue9/analog_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = load_dataset("mnist", "test", root=args.data_root)
    if args.checkpoint:
        from nora.train import load_model
        model, _ = load_model(args.checkpoint)
    else:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model("lenet5")
    model.eval()
    results = {"load_average_before": os.getloadavg(), "threads": 1, "images": len(test.y)}

    def infer():
        return clean_accuracy(model, test.x, test.y)

    inference = {"clean": (timed(infer, args.repeats), infer())}
    for name, hardware in (("pcm tile, t = 1 h", A.preset("pcm")),
                           ("ordered MAC, natural", A.preset("bss2")),
                           ("ordered MAC, positive first", A.preset("bss2").varied("order", "positive_first"))):
        att = hardware.attach(model, SeedTree(0))
        if hasattr(att, "set_time"):
            att.set_time(3600.0)
        inference[name] = (timed(infer, args.repeats), infer())
        att.detach()
    results["inference"] = {k: {"seconds": s, "ratio_to_clean": s / inference["clean"][0], "accuracy": a}
                            for k, (s, a) in inference.items()}

    model.train()
    xb, yb = test.x[:128], test.y[:128]

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xb), yb).backward()

    training = {"clean": timed(step, args.repeats * 3)}
    hwa = A.hardware_from_dict({"preset": "pcm", "modifier": {"kind": "add_normal", "std": 0.08}})
    for name, hardware in (("pcm tile (hardware-aware)", hwa), ("ordered MAC, natural", A.preset("bss2")),
                           ("ordered MAC, positive first", A.preset("bss2").varied("order", "positive_first"))):
        with hardware.attach(model, SeedTree(0)):
            training[name] = timed(step, args.repeats * 3)
    results["training_step"] = {k: {"seconds": s, "ratio_to_clean": s / training["clean"]} for k, s in training.items()}
    results["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
