"""LeNet-5 / MNIST on a phase-change-memory chip from 1 second to 1 year after programming.

Three trainings with nora's trainer: clean, noisy (additive activation noise at every site) and
hardware-aware (the PCM tile's periphery in the forward pass plus additive weight noise, the
``examples/analog_pcm_hwa.yaml`` recipe). Each network is programmed on several chips (the PCM
preset: programming noise, drift with device-to-device exponent spread, 1/f read noise, 7-bit DAC,
9-bit ADC, output noise) and read at each time, with and without global drift compensation, on the
MNIST test set. Sizes are reduced for a shared 2-core machine (``--train-subset``, ``--epochs``).

    nice -n 5 python benchmarks/study_analog_pcm.py --data-root ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import nora.analog as A
from nora.config import parse_config
from nora.measure import clean_accuracy
from nora.seeds import SeedTree
from nora.train import train
from nora.train.setup import load_data

TIMES = [1.0, 3600.0, 86400.0, 2592000.0, 31536000.0]
TRAININGS = {
    "clean": None,
    "noisy (additive 0.1)": {"kind": "additive", "sigma": 0.1},
    "hardware-aware (PCM tile)": {"hardware": {"kind": "tile", "preset": "pcm",
                                               "modifier": {"kind": "add_normal", "std": 0.08}}},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/nora-study-pcm"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue9"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--chips", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    for name, noise in TRAININGS.items():
        data = {"name": "pcm-" + name.split()[0], "output_dir": str(args.work_dir), "seed": 0,
                "data": {"dataset": "mnist", "root": args.data_root, "batch_size": 128,
                         "train_subset": args.train_subset, "test_subset": args.test_subset},
                "model": {"arch": "lenet5"},
                "train": {"epochs": args.epochs, "optimizer": "adam", "lr": 0.001, "scheduler": "cosine",
                          "progress": False}}
        if noise is not None:
            data["train_noise"] = noise
        config = parse_config(data)
        model = train(config).model.eval()
        _, test = load_data(config.data)
        clean = clean_accuracy(model, test.x, test.y)
        for compensation in (True, False):
            hardware = A.preset("pcm").varied("device.drift_compensation", compensation)
            per_time = {t: [] for t in TIMES}
            for chip in range(args.chips):
                att = hardware.attach(model, SeedTree(chip))
                for t in TIMES:
                    att.set_time(t)
                    per_time[t].append(clean_accuracy(model, test.x, test.y))
                att.detach()
            row = {"training": name, "compensation": compensation, "clean": clean,
                   "accuracy": {str(int(t)): {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)),
                                              "per_chip": v} for t, v in per_time.items()}}
            rows.append(row)
            print(name, compensation, clean, {k: round(v["mean"], 4) for k, v in row["accuracy"].items()},
                  flush=True)
    out = {"epochs": args.epochs, "train_subset": args.train_subset, "test_samples": len(test.y),
           "chips": args.chips, "times_s": TIMES, "hardware": A.preset("pcm").to_dict(),
           "seconds": time.time() - started, "rows": rows}
    (args.out / "study_analog_pcm.json").write_text(json.dumps(out, indent=2))
    labels = ["1 s", "1 h", "1 day", "30 days", "1 year"]
    lines = ["| training | drift comp. | clean | " + " | ".join(labels) + " |", "|---" * (len(labels) + 3) + "|"]
    for row in rows:
        cells = []
        for t in TIMES:
            a = row["accuracy"][str(int(t))]
            cells.append(f"{a['mean']:.4f} ± {1.96 * a['std'] / math.sqrt(args.chips):.4f}")
        lines.append(f"| {row['training']} | {'yes' if row['compensation'] else 'no'} | {row['clean']:.4f} | "
                     + " | ".join(cells) + " |")
    (args.out / "study_analog_pcm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(rows, args.out / "study_analog_pcm.png")
    print(f"{time.time() - started:.0f} s")


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for row in rows:
        means = [row["accuracy"][str(int(t))]["mean"] for t in TIMES]
        ax.plot(TIMES, means, marker="o", linestyle="-" if row["compensation"] else "--",
                label=f"{row['training']}{'' if row['compensation'] else ', no compensation'}")
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("LeNet-5 / MNIST on the PCM tile preset")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
