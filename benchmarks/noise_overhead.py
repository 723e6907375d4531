"""Noise overhead: noisy over clean forward (and training step) of the same LeNet-5, in one run.

    python benchmarks/noise_overhead.py --data-root ../shared/data/mnist [--device cuda] \
        [--out benchmarks/results/noise_overhead.json]

Inference: 10,000 images in batches of 256 (2 threads on CPU). Variants, measured interleaved
round after round (each variant's fastest round, and the median over rounds of its ratio to the clean
pass of the same round): clean; nora with additive noise at all 12
sites in fast mode (the Gaussian bank) and in exact mode (fresh draws); both at the 5 conv/linear
outputs; a naive forward hook calling ``torch.randn_like`` at the conv/linear outputs (the baseline
exact mode must not lose to); and the cost of the draws alone in each mode. Training: 20 steps at
batch 128, the same variants. On CUDA every timing is closed by a device synchronisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from torch import nn

import nora
from nora.devices import resolve_device
from nora.models import build_model
from nora.noise.rng import BankStream, Stream
from nora.perf.latency import interleaved_rounds, paired_median

CONV_LINEAR = nora.SitePolicy(include=("conv", "linear"))


def spec(mode: str, policy: nora.SitePolicy | None = None) -> nora.NoiseSpec:
    return nora.NoiseSpec(activation=nora.GaussianAdditive(0.1), policy=policy or nora.SitePolicy(), noise_mode=mode)


def images(data_root: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data_root:
        from nora.data import load_dataset

        test = load_dataset("mnist", split="test", root=data_root)
        return test.x, test.y, "MNIST test set"
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(10_000, 1, 28, 28, generator=generator), torch.randint(0, 10, (10_000,), generator=generator),
            "random images")


def naive_hooks(model: nn.Module, sigma: float):
    def hook(_m, _i, out):
        return out + sigma * torch.randn_like(out)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def with_hooks(run, model):
    def go():
        handles = naive_hooks(model, 0.1)
        try:
            run()
        finally:
            for h in handles:
                h.remove()
    return go


def with_nora(run, model, noise_spec, example):
    def go():
        with nora.attach(model, noise_spec, seed=0, example_input=example):
            run()
    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/noise_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    x, y, source = images(args.data_root)
    x, y = x.to(device), y.to(device)
    init = torch.Generator().manual_seed(0)
    model = build_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=init) * 0.1)
    model = model.to(device).eval()
    batches = [x[i:i + 256] for i in range(0, len(x), 256)]
    sites = nora.sites(model, x[:2])
    elements = sum(s.numel for s in sites)
    conv_linear = sum(s.numel for s in nora.sites(model, x[:2], policy=CONV_LINEAR))

    @torch.no_grad()
    def forward_all():
        for batch in batches:
            model(batch)

    buffers = {n: torch.empty(256 * n, device=device) for n in (elements, conv_linear)}

    def draws_only(n, stream):
        def run():
            for batch in batches:
                stream.normal_(buffers[n][: len(batch) * n])
        return run

    example = x[:2]
    variants = {
        "clean": forward_all,
        "fast_all_sites": with_nora(forward_all, model, spec("fast"), example),
        "exact_all_sites": with_nora(forward_all, model, spec("exact"), example),
        "fast_conv_linear": with_nora(forward_all, model, spec("fast", CONV_LINEAR), example),
        "exact_conv_linear": with_nora(forward_all, model, spec("exact", CONV_LINEAR), example),
        "naive_hook_conv_linear": with_hooks(forward_all, model),
        "draws_only_all_sites_fast": draws_only(elements, BankStream(1)),
        "draws_only_all_sites_exact": draws_only(elements, Stream(1)),
    }
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    rounds = interleaved_rounds(variants, args.rounds, sync)
    timings = {k: min(v) for k, v in rounds.items()}

    train_model = build_model("lenet5").to(device)
    optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-3)
    xb, yb = x[:128], y[:128]
    loss_fn = nn.CrossEntropyLoss()

    def steps():
        for _ in range(20):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(train_model(xb), yb).backward()
            optimizer.step()

    train_variants = {
        "clean": steps,
        "fast_all_sites": with_nora(steps, train_model, spec("fast"), xb[:2]),
        "exact_all_sites": with_nora(steps, train_model, spec("exact"), xb[:2]),
        "fast_conv_linear": with_nora(steps, train_model, spec("fast", CONV_LINEAR), xb[:2]),
        "exact_conv_linear": with_nora(steps, train_model, spec("exact", CONV_LINEAR), xb[:2]),
        "naive_hook_conv_linear": with_hooks(steps, train_model),
    }
    train_rounds = interleaved_rounds(train_variants, args.rounds, sync)
    train_timings = {k: min(v) for k, v in train_rounds.items()}

    clean, clean_step = timings["clean"], train_timings["clean"]
    result = {
        "machine": f"{platform.machine()}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "load_average": os.getloadavg(),
        "data": source,
        "elements_per_image_all_sites": elements,
        "elements_per_image_conv_linear": conv_linear,
        "inference_seconds": timings,
        "inference_ratio_vs_clean": {k: v / clean for k, v in timings.items()},
        "exact_over_naive_hook_inference": timings["exact_conv_linear"] / timings["naive_hook_conv_linear"],
        "clean_ns_per_site_element": clean / (len(x) * elements) * 1e9,
        "draw_ns_per_value": {m: timings[f"draws_only_all_sites_{m}"] / (len(x) * elements) * 1e9
                              for m in ("fast", "exact")},
        "train_step_seconds": {k: v / 20 for k, v in train_timings.items()},
        "train_step_ratio_vs_clean": {k: v / clean_step for k, v in train_timings.items()},
        "exact_over_naive_hook_training": train_timings["exact_conv_linear"] / train_timings["naive_hook_conv_linear"],
        "paired_median": {
            "inference_ratio_vs_clean": {k: paired_median(rounds, k, "clean") for k in rounds},
            "exact_over_naive_hook_inference": paired_median(rounds, "exact_conv_linear", "naive_hook_conv_linear"),
            "train_step_ratio_vs_clean": {k: paired_median(train_rounds, k, "clean") for k in train_rounds},
            "exact_over_naive_hook_training": paired_median(train_rounds, "exact_conv_linear", "naive_hook_conv_linear"),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
