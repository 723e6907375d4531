"""Does ignoring operand order cost accuracy on an analog processor? (methods.md section 10)

Keyword spotting on the Free Spoken Digit Dataset (10 MFCCs x 49 frames, 10 digits), the MLPerf-Tiny
style MLP ``kws-mlp``, trained with nora's trainer in four ways and evaluated on one held-out chip:
the BrainScaleS-2-like ordered MAC (saturation after every operand, in arrival order ``--order``,
default excitatory operands first) with that chip's fixed pattern (column gain spread 5 %, column
offset 1 LSB, 2 LSB noise) and gain ``--gain`` (default 0.02: at the nominal 0.002 no 128-row chunk
of this network ever reaches the accumulator's range, so order cannot matter; a chip calibrated to
use its output range has a larger gain):

    clean       float training, no hardware in the loop
    ordered     trained on the ordered model of the held-out chip (the "trained on the hardware" case)
    unordered   trained on the non-ordered model (one clamp per chunk total) of the same chip
    other-chip  trained on the ordered model of another chip (another fixed pattern)

Each variant is trained with several seeds; each trained network is evaluated with several noise
seeds on the held-out chip. The table gives the mean over seeds with a t-interval across seeds.

    nice -n 5 python benchmarks/study_analog_ordering.py --data-root ../shared/data/fsdd
    python benchmarks/study_analog_ordering.py --data-root ../shared/data/fsdd --quick
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import nora.analog as A
from nora.config import parse_config
from nora.measure import clean_accuracy
from nora.seeds import SeedTree
from nora.train import train
from nora.train.setup import load_data

HELD_OUT_CHIP = 1000
OTHER_CHIP = 2000


def variants(chip: dict) -> dict:
    return {
        "clean": None,
        "ordered": {**chip, "chip_seed": HELD_OUT_CHIP},
        "unordered": {**chip, "chip_seed": HELD_OUT_CHIP, "ordered": False},
        "other-chip": {**chip, "chip_seed": OTHER_CHIP},
    }


def evaluations(chip: dict) -> dict:
    out = {"held-out chip, ordered": {**chip, "chip_seed": HELD_OUT_CHIP},
           "held-out chip, unordered": {**chip, "chip_seed": HELD_OUT_CHIP, "ordered": False}}
    if chip["order"] != "natural":
        out["held-out chip, natural order"] = {**chip, "chip_seed": HELD_OUT_CHIP, "order": "natural"}
    return out


def config(name: str, hardware, seed: int, args) -> dict:
    data = {"name": f"{name}-{args.backward}-s{seed}", "output_dir": str(args.work_dir), "seed": seed,
            "data": {"dataset": "fsdd", "root": args.data_root, "batch_size": 64, "test_batch_size": 300},
            "model": {"arch": "kws-mlp"},
            "train": {"epochs": args.epochs, "optimizer": "adam", "lr": 0.001, "scheduler": "cosine",
                      "progress": False}}
    if hardware is not None:
        data["train_noise"] = {"hardware": hardware}
    return data


def t_interval(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, half


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nora-study-ordering"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue9"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eval-repeats", type=int, default=5)
    parser.add_argument("--gain", type=float, default=0.02)
    parser.add_argument("--order", default="positive_first")
    parser.add_argument("--backward", default="straight_through", choices=["straight_through", "saturation_masked"],
                        help="the ordered MAC's backward pass in training")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.eval_repeats = 2, [0], 2
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    chip = {"kind": "ordered_mac", "preset": "bss2-chip", "gain": args.gain, "order": args.order}
    EVALUATIONS = evaluations(chip)
    chip = {**chip, "backward": args.backward}
    _, test = load_data(parse_config(config("x", None, 0, args)).data)
    results: dict[str, dict[str, list[float]]] = {}
    for name, hardware in variants(chip).items():
        for seed in args.seeds:
            run = train(parse_config(config(name, hardware, seed, args)))
            model = run.model.eval()
            for ev_name, ev in EVALUATIONS.items():
                att = A.hardware_from_dict(ev).attach(model, SeedTree(seed))
                accs = []
                for r in range(args.eval_repeats):
                    att.reseed(SeedTree(seed).child("eval", r))
                    accs.append(clean_accuracy(model, test.x, test.y))
                att.detach()
                results.setdefault(name, {}).setdefault(ev_name, []).append(float(np.mean(accs)))
            results[name].setdefault("float (no hardware)", []).append(clean_accuracy(model, test.x, test.y))
            print(name, seed, {k: round(v[-1], 4) for k, v in results[name].items()}, flush=True)
    rows = []
    for name, by_eval in results.items():
        row = {"trained on": name}
        for ev_name, values in by_eval.items():
            mean, half = t_interval(values)
            row[ev_name] = {"mean": mean, "ci95_half": half, "per_seed": values}
        rows.append(row)
    out = {"epochs": args.epochs, "backward": args.backward, "gain": args.gain, "order": args.order,
           "seeds": args.seeds, "eval_repeats": args.eval_repeats,
           "test_samples": len(test.y), "held_out_chip": HELD_OUT_CHIP, "other_chip": OTHER_CHIP,
           "hardware": A.hardware_from_dict(EVALUATIONS["held-out chip, ordered"]).to_dict(),
           "seconds": time.time() - started, "rows": rows}
    stem = f"study_analog_ordering_{args.backward}"
    (args.out / f"{stem}.json").write_text(json.dumps(out, indent=2))
    columns = [*EVALUATIONS, "float (no hardware)"]
    lines = ["| trained on | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [f"{row[c]['mean']:.3f} ± {row[c]['ci95_half']:.3f}" for c in columns]
        lines.append(f"| {row['trained on']} | " + " | ".join(cells) + " |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
