"""nora's tile presets against IBM aihwkit 1.2 on the same LeNet-5 / MNIST weights, in one run.

Development-only comparison (aihwkit is never a dependency of nora): run it with a Python that has
aihwkit built and nora importable, e.g.

    /work/aihwkit-venv/bin/python benchmarks/analog_aihwkit_compare.py \\
        --checkpoint RUN_DIR --data-root ../shared/data/mnist

For each preset (ideal, output-noise-only, pcm) both simulators get equivalent settings: abs-max
noise management, iterative bound management, 7-bit DAC over [-1, 1], 9-bit ADC over [-12, 12],
output noise 0.06 (in units of the normalised output), 512 x 512 tiles, digital bias, and for pcm
the PCM statistical model (g_max 25 uS) with global drift compensation. Accuracy on the 10,000 test
images is averaged over ``--chips`` programmed chips per drift time. Inference time, single-threaded,
for nora (output noise in exact mode, fresh draws, and in fast mode, the Gaussian bank), aihwkit's C++
tile and aihwkit's torch tile is taken after all accuracies, in ``--repeats`` interleaved rounds: every
round times one pass of every simulator, so a host whose speed drifts over minutes slows them alike.
Each simulator's best pass is reported, and the median over rounds of each round's aihwkit / nora ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np
import torch

import nora.analog as A
from nora.analog import kernels as analog_kernels
from nora.data import load_dataset
from nora.measure import clean_accuracy
from nora.noise.rng import NOISE_MODES
from nora.perf.latency import interleaved_rounds, paired_median
from nora.seeds import SeedTree
from nora.train import load_model

TIMES = [1.0, 3600.0, 86400.0, 2592000.0, 31536000.0]


def aihwkit_config(preset: str, torch_tile: bool):
    from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
    from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType

    rpu = TorchInferenceRPUConfig() if torch_tile else InferenceRPUConfig()
    fwd = rpu.forward
    fwd.noise_management = NoiseManagementType.ABS_MAX
    fwd.bound_management = BoundManagementType.ITERATIVE
    fwd.inp_bound, fwd.out_bound = 1.0, 12.0
    fwd.w_noise = 0.0
    if preset == "pcm":
        fwd.inp_res, fwd.out_res, fwd.out_noise = 1 / (2 ** 7 - 2), 1 / (2 ** 9 - 2), 0.06
        rpu.noise_model = PCMLikeNoiseModel(g_max=25.0)
        rpu.drift_compensation = GlobalDriftCompensation()
    else:
        fwd.inp_res, fwd.out_res = -1, -1
        fwd.out_noise = 0.06 if preset == "output-noise-only" else 0.0
        fwd.is_perfect = preset == "ideal"
        rpu.drift_compensation = None
    rpu.mapping.max_input_size, rpu.mapping.max_output_size = 512, 512
    rpu.mapping.digital_bias = True
    rpu.mapping.weight_scaling_omega = 1.0
    return rpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--test-subset", type=int, default=None, help="first N test images (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/issue9/analog_aihwkit_compare.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from aihwkit import __version__ as aihwkit_version
    from aihwkit.nn.conversion import convert_to_analog

    model, _ = load_model(args.checkpoint)
    model.eval()
    test = load_dataset("mnist", "test", root=args.data_root)
    x, y = test.x[:args.test_subset], test.y[:args.test_subset]
    report = {"aihwkit": aihwkit_version, "images": len(y), "chips": args.chips, "times_s": TIMES,
              "compiled_dac_kernels": analog_kernels._extension() is not None,
              "load_average_before": os.getloadavg(), "accuracy": {}}
    report["clean_accuracy"] = clean_accuracy(model, x, y)
    passes = {"clean": lambda: clean_accuracy(model, x, y)}
    for preset in ("ideal", "output-noise-only", "pcm"):
        times = TIMES if preset == "pcm" else [0.0]
        read_at = 3600.0 if preset == "pcm" else 0.0
        for mode in NOISE_MODES:
            nora_acc = {t: [] for t in times}
            for chip in range(args.chips):
                chip_model = copy.deepcopy(model)
                att = A.preset(preset).attach(chip_model, SeedTree(chip), mode)
                for t in times:
                    att.set_time(t)
                    nora_acc[t].append(clean_accuracy(chip_model, x, y))
                if chip == 0:  # kept attached for the timing rounds
                    att.set_time(read_at)
                    passes[f"nora {mode} {preset}"] = lambda m=chip_model: clean_accuracy(m, x, y)
            report["accuracy"][f"nora {mode} {preset}"] = {str(int(t)): {"mean": float(np.mean(v)), "per_chip": v}
                                                           for t, v in nora_acc.items()}
        for torch_tile in (False, True):
            name = f"aihwkit {'torch' if torch_tile else 'C++'} tile"
            analog = convert_to_analog(model, aihwkit_config(preset, torch_tile)).eval()
            acc = {t: [] for t in times}
            for chip in range(args.chips):
                with torch.random.fork_rng():
                    torch.manual_seed(1000 + chip)
                    if preset == "pcm":
                        analog.program_analog_weights()
                    for t in times:
                        if preset == "pcm":
                            analog.drift_analog_weights(t)
                        acc[t].append(clean_accuracy(analog, x, y))
            if preset == "pcm":
                analog.drift_analog_weights(read_at)
            passes[f"{name} {preset}"] = lambda m=analog: clean_accuracy(m, x, y)
            report["accuracy"][f"{name} {preset}"] = {str(int(t)): {"mean": float(np.mean(v)), "per_chip": v}
                                                      for t, v in acc.items()}
        print(preset, {k: v for k, v in report["accuracy"].items() if k.endswith(preset)}, flush=True)
    report["load_average_before_timing"] = os.getloadavg()
    rounds = interleaved_rounds(passes, args.repeats)
    report["seconds_per_round"] = rounds
    report["seconds"] = {name: min(v) for name, v in rounds.items()}
    clean_s = report["seconds"]["clean"]
    report["ratio_to_clean"] = {k: v / clean_s for k, v in report["seconds"].items()}
    report["aihwkit_cpp_over_nora_median"] = {
        f"{mode} {preset}": paired_median(rounds, f"aihwkit C++ tile {preset}", f"nora {mode} {preset}")
        for preset in ("ideal", "output-noise-only", "pcm") for mode in NOISE_MODES}
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"seconds": report["seconds"], "ratio_to_clean": report["ratio_to_clean"],
                      "aihwkit_cpp_over_nora_median": report["aihwkit_cpp_over_nora_median"]}, indent=2))


if __name__ == "__main__":
    main()
