"""Noise overhead: noisy over clean forward (and training step) of the same LeNet-5, in one run.

    python benchmarks/noise_overhead.py [--data-root ../shared/data/mnist] [--out benchmarks/out/noise_overhead.json]

Inference: 10,000 images in batches of 256, 2 threads. Variants, measured interleaved and reported as
the best of several rounds: clean; nora with additive noise at all 12 sites; nora at the 5 conv/linear
outputs only; a naive forward hook calling ``torch.randn_like`` at the conv/linear outputs (the
baseline the issue quotes); and the raw cost of drawing the same number of normals with torch alone,
which bounds what any injector can reach. Training: one step at batch 128, clean vs noisy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

import nora
from nora.models import build_model
from nora.noise import NoiseSource


def images(data_root: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    if data_root:
        from nora.data import load_dataset

        test = load_dataset("mnist", split="test", root=data_root)
        return test.x, test.y, "MNIST test set"
    generator = torch.Generator().manual_seed(0)
    return torch.rand(10_000, 1, 28, 28, generator=generator), torch.randint(0, 10, (10_000,), generator=generator), "random images"


def best_of(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def naive_hooks(model: nn.Module, sigma: float):
    def hook(_m, _i, out):
        return out + sigma * torch.randn_like(out)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/noise_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y, source = images(args.data_root)
    model = build_model("lenet5").eval()
    batches = [x[i : i + 256] for i in range(0, len(x), 256)]
    sites = nora.sites(model, x[:2])
    elements = sum(s.numel for s in sites)
    conv_linear = sum(s.numel for s in sites if s.module_type in ("Conv2d", "Linear"))

    @torch.no_grad()
    def forward_all():
        for batch in batches:
            model(batch)

    def with_nora(**options):
        def run():
            with nora.attach(model, nora.GaussianAdditive(0.1), seed=0, example_input=x[:2], **options):
                forward_all()
        return run

    def with_naive():
        handles = naive_hooks(model, 0.1)
        try:
            forward_all()
        finally:
            for h in handles:
                h.remove()

    source_all, source_cl = NoiseSource(0), NoiseSource(0)
    buffers = {n: torch.empty(256 * n) for n in (elements, conv_linear)}

    def rng_only(n, src, parallel):
        def run():
            for batch in batches:
                buf = buffers[n][: len(batch) * n]
                src.fill_(buf) if parallel else buf.normal_()
        return run

    variants = {
        "clean": forward_all,
        "nora_all_sites": with_nora(),
        "nora_conv_linear": with_nora(site_types=["Conv2d", "Linear"], include_input=False),
        "naive_hook_conv_linear": with_naive,
        "rng_only_all_sites_1thread": rng_only(elements, None, False),
        "rng_only_all_sites_nora": rng_only(elements, source_all, True),
        "rng_only_conv_linear_nora": rng_only(conv_linear, source_cl, True),
    }
    timings = {name: float("inf") for name in variants}
    for _ in range(args.rounds):  # interleaved, so drifts in machine speed hit every variant alike
        for name, fn in variants.items():
            timings[name] = min(timings[name], best_of(fn, 1))

    # Training step at batch 128.
    train_model = build_model("lenet5")
    optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-3)
    xb, yb = x[:128], y[:128]
    loss_fn = nn.CrossEntropyLoss()

    def step():
        for _ in range(20):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(train_model(xb), yb).backward()
            optimizer.step()

    def noisy_step(**options):
        def run():
            with nora.attach(train_model, nora.GaussianAdditive(0.1), seed=0, example_input=xb[:2], **options):
                step()
        return run

    def naive_step():
        handles = naive_hooks(train_model, 0.1)
        try:
            step()
        finally:
            for h in handles:
                h.remove()

    train_variants = {"clean": step, "nora_all_sites": noisy_step(),
                      "nora_conv_linear": noisy_step(site_types=["Conv2d", "Linear"], include_input=False),
                      "naive_hook_conv_linear": naive_step}
    train_timings = {name: float("inf") for name in train_variants}
    for _ in range(args.rounds):
        for name, fn in train_variants.items():
            train_timings[name] = min(train_timings[name], best_of(fn, 1))

    clean, clean_step = timings["clean"], train_timings["clean"]
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": source,
        "elements_per_image_all_sites": elements,
        "elements_per_image_conv_linear": conv_linear,
        "inference_seconds": timings,
        "inference_ratio_vs_clean": {k: v / clean for k, v in timings.items()},
        "clean_ns_per_site_element": clean / (len(x) * elements) * 1e9,
        "rng_ns_per_normal_nora": timings["rng_only_all_sites_nora"] / (len(x) * elements) * 1e9,
        "train_step_seconds": {k: v / 20 for k, v in train_timings.items()},
        "train_step_ratio_vs_clean": {k: v / clean_step for k, v in train_timings.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
