"""One specification, one measurement engine, one seed tree: the same numbers from every command.

Statistical claims use fixed seeds and bounds of five standard errors (|corr| < 5/sqrt(n)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

import nora
from nora import GaussianAdditive, GaussianMultiplicative, NoiseSpec, NoraError, SeedTree, SitePolicy, WeightSpec
from nora.cli import main
from nora.config import parse_config
from nora.data import load_dataset
from nora.devices import model_device, resolve_device
from nora.measure import Engine
from nora.sim import attach, discover_sites, resolve_plan


# ------------------------------------------------------------------------------ the seed tree
def test_seed_tree_children_are_distinct_and_reproducible():
    tree = SeedTree(0)
    paths = [("train", "epoch", e, kind) for e in range(50) for kind in ("activation", "weight", "hardware")]
    paths += [("eval", "repeat", r, "activation") for r in range(50)] + [("data", "order"), ("train", "init")]
    seeds = [tree.child(*p).seed() for p in paths]
    assert len(set(seeds)) == len(seeds)
    # The collision of the old arithmetic: seed 0's weight stream equalled epoch 1's activation stream.
    assert tree.child("train", "epoch", 0, "weight").seed() != tree.child("train", "epoch", 1, "activation").seed()
    assert SeedTree(0).child("eval", "repeat", 3).seed() == tree.child("eval", "repeat", 3).seed()
    assert SeedTree(1).child("eval", "repeat", 3).seed() != tree.child("eval", "repeat", 3).seed()
    with pytest.raises(NoraError, match="seed must be an integer >= 0"):
        SeedTree(-1)
    with pytest.raises(NoraError, match="seed-tree key"):
        tree.child(1.5)


def test_counter_generators_are_reproducible_and_independent_draw_by_draw():
    """Numbered draws under one node (VANT's per-batch levels): the same index repeats its numbers,
    nodes and neighbouring indices give uncorrelated ones (|r| of 4,000 pairs within 5 standard errors)."""
    node = SeedTree(0).child("train", "schedule", 3)
    draws = torch.stack([torch.randn(4000, generator=node.counter_generator(i)) for i in range(200)])
    assert torch.equal(draws[7], torch.randn(4000, generator=SeedTree(0).child("train", "schedule", 3).counter_generator(7)))
    other = torch.randn(4000, generator=SeedTree(0).child("train", "schedule", 4).counter_generator(7))
    neighbours = [torch.corrcoef(torch.stack([draws[i], draws[i + 1]]))[0, 1] for i in range(199)]
    bound = 5 / math.sqrt(4000)
    assert max(abs(float(r)) for r in neighbours) < bound
    assert abs(float(torch.corrcoef(torch.stack([draws[7], other]))[0, 1])) < bound
    assert abs(float(draws.mean())) < 5 / math.sqrt(draws.numel()) and abs(float(draws.std()) - 1) < 0.01
    with pytest.raises(NoraError, match="draw index must be an integer >= 0"):
        node.counter_generator(-1)


def test_nothing_touches_torchs_global_generator():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    with attach(model, GaussianAdditive(0.5)):
        model(x)
    spec = NoiseSpec(activation=GaussianAdditive(0.3), weight=WeightSpec(GaussianAdditive(0.01)))
    with Engine(model, x, y, spec, repeats=3) as engine:
        engine.accuracy([0.1, 1.0])
    assert torch.equal(torch.random.get_rng_state(), before)


# ------------------------------------------------------------------------------ independence of draws
def _pure_noise_model(width: int) -> nn.Module:
    """Linear layers with zero weights and biases: each site's output is exactly its noise."""
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, width))
    for layer in model:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def _capture(model):
    seen = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone())) for layer in model]
    return seen, handles


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def test_draws_are_independent_between_sites_samples_passes_and_repeats():
    width, batch = 500, 200
    n = width * batch
    bound = 5 / math.sqrt(n)
    model = _pure_noise_model(width)
    handle = attach(model, GaussianAdditive(1.0), seed=SeedTree(3).child("eval", "repeat", 0),
                    policy=SitePolicy(include=("linear",)), example_input=torch.zeros(2, width))
    seen, hooks = _capture(model)  # registered after the noise hooks: they see the noisy outputs
    x = torch.zeros(batch, width)
    with torch.no_grad():
        model(x)
        model(x)
    first_site, second_site, next_pass = seen[0], seen[1], seen[2]
    assert abs(float(first_site.mean())) < 5 / math.sqrt(n)
    assert abs(float(first_site.var()) - 1) < 5 * math.sqrt(2 / n)
    assert abs(_corr(first_site, second_site)) < bound                       # sites
    assert abs(_corr(first_site[: batch // 2], first_site[batch // 2:])) < 5 / math.sqrt(n / 2)   # samples
    assert abs(_corr(first_site, next_pass)) < bound                         # consecutive passes
    # Repeats: another repeat's node, and the packed form that tiles both repeats in one batch.
    seen.clear()
    handle.reseed(SeedTree(3).child("eval", "repeat", 1))
    with torch.no_grad():
        model(x)
    other_repeat = seen[0]
    assert abs(_corr(first_site, other_repeat)) < bound
    seen.clear()
    handle.use_streams([SeedTree(3).child("eval", "repeat", 0), SeedTree(3).child("eval", "repeat", 1)])
    with torch.no_grad():
        model(torch.zeros(2 * batch, width))
    assert torch.equal(seen[0][:batch], first_site) and torch.equal(seen[0][batch:], other_repeat)
    # No periodicity within a pass: the lag-1 autocorrelation of one site's draws is zero.
    flat = first_site.flatten()
    assert abs(_corr(flat[:-1], flat[1:])) < bound
    for h in hooks:
        h.remove()
    handle.detach()


# ------------------------------------------------------------------------------ placement and cost
def test_budget_is_shared_by_the_selected_sites_only():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    sites = discover_sites(model, torch.zeros(2, 4))
    assert len(sites) == 3
    spec = NoiseSpec(activation=GaussianAdditive(0.0), sigmas=(1.0, 1.0, 2.0), budget=2.0, sites=[1, 2])
    plan = resolve_plan(spec, sites)
    assert plan[0] is None
    assert [p.noise.sigma for p in plan[1:]] == pytest.approx([2 / 3, 4 / 3])
    assert sum(p.noise.sigma for p in plan[1:]) == pytest.approx(2.0)
    with pytest.raises(NoraError, match="selected sites all have sigma 0"):
        resolve_plan(NoiseSpec(activation=GaussianAdditive(0.0), sigmas=(1.0, 0.0, 0.0), budget=1.0, sites=[1, 2]),
                     sites)


def test_per_type_repeats_from_yaml_reach_the_cost_of_every_result(tmp_path):
    config = parse_config({"eval": {"noise": {"kind": "additive", "sigma": 0.2, "repeats": {"ReLU": 4}}}})
    spec = nora.sim.spec_from_config(config.eval.noise)
    test = load_dataset("digits", "test")
    from nora.models import build_model

    model = build_model("lenet5", input_shape=test.input_shape, num_classes=10)
    with Engine(model, test.x, test.y, spec, repeats=2) as engine:
        (row,) = engine.summary()
        relu = [s.index for s in engine.sites if s.module_type == "ReLU"]
        assert [row["cost"]["repeats"][i] for i in relu] == [4] * len(relu)
        assert row["cost"]["overhead"] > 1.0
        assert row["cost"]["evaluations_per_sample"] == sum(
            s.numel * (4 if s.module_type == "ReLU" else 1) for s in engine.sites)


# ------------------------------------------------------------------------------ one engine for every command
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from nora.train import train

    config = parse_config({"name": "engine-lenet", "output_dir": str(tmp_path_factory.mktemp("runs")),
                           "data": {"dataset": "digits", "batch_size": 64}, "model": {"arch": "lenet5"},
                           "train": {"epochs": 4, "lr": 0.003, "progress": False}})
    return train(config, console=Console(quiet=True)).run_dir


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("relative", [None, "std", "maxabs"])
def test_eval_curve_and_naive_walk_give_bit_identical_numbers(capsys, digits_run, tmp_path, relative):
    # 450 test samples, calibration on 200 of them: the window is smaller than the data.
    common = ["--checkpoint", digits_run, "--sites", "3", "--repeats", "3", "--seed", "4",
              "--set", "eval.noise.calibration_samples=200"]
    if relative:
        common += ["--relative", relative]
    _cli(capsys, "eval", *common, "--sigma", "0.5", "5", "--output", tmp_path / "e")
    _cli(capsys, "curve", *common, "--sigma-range", "0.5", "5", "--per-decade", "1", "--output", tmp_path / "c")
    _cli(capsys, "walk", *common, "--sigma-range", "0.5", "5", "--per-decade", "1", "--naive",
         "--output", tmp_path / "n")
    _cli(capsys, "walk", *common, "--sigma-range", "0.5", "5", "--per-decade", "1", "--output", tmp_path / "f")
    evaluated = [r["values"] for r in json.loads((tmp_path / "e.json").read_text())["rows"]]
    curve = [r["values"] for r in json.loads((tmp_path / "c" / "curve.json").read_text())["curves"][0]["rows"]]
    naive = json.loads((tmp_path / "n" / "walk.json").read_text())["runs"][0]
    fast = json.loads((tmp_path / "f" / "walk.json").read_text())["runs"][0]
    walked = [r["values"] for r in naive["sites"][0]["rows"]]
    assert evaluated == curve == walked
    assert [r["values"] for r in fast["sites"][0]["rows"]] == walked and fast["sites"][0]["path"] == "split"
    assert len({v for row in evaluated for v in row}) > 2  # real noise, distinct repeats
    stored = json.loads((tmp_path / "e.json").read_text())["measurement"]["calibration"]
    if relative:
        assert stored["statistic"] == relative and stored["samples"] == 200 and len(stored["reference"]) == 12
        assert stored == naive["measurement"]["calibration"]
    else:
        assert stored is None


def test_weight_noise_reaches_every_command(capsys, digits_run, tmp_path):
    _cli(capsys, "eval", "--checkpoint", digits_run, "--sigma", "0", "--weight-sigma", "0.5", "--repeats", "2",
         "--output", tmp_path / "w")
    _cli(capsys, "eval", "--checkpoint", digits_run, "--sigma", "0", "--repeats", "2", "--output", tmp_path / "c")
    noisy = json.loads((tmp_path / "w.json").read_text())
    clean = json.loads((tmp_path / "c.json").read_text())
    assert clean["rows"][0]["values"] == [clean["clean_accuracy"]] * 2
    assert noisy["rows"][0]["mean"] < clean["rows"][0]["mean"] - 0.05  # the weights really were perturbed
    assert noisy["noise"]["weight"]["noise"]["sigma"] == 0.5
    # The same weight noise from a config file through --config and --set.
    cfg = tmp_path / "noise.yaml"
    cfg.write_text("eval: {noise: {kind: additive, sigma: 0.0, weight: {sigma: 0.2}}, repeats: 2, sigmas: [0]}\n")
    _cli(capsys, "eval", "--checkpoint", digits_run, "--config", cfg, "--set", "eval.noise.weight.sigma=0.5",
         "--output", tmp_path / "f")
    assert json.loads((tmp_path / "f.json").read_text())["rows"][0]["values"] == noisy["rows"][0]["values"]


def test_packing_and_backends_never_change_a_number(digits_run):
    from nora.train import load_model

    model, _ = load_model(digits_run)
    test = load_dataset("digits", "test")
    spec = NoiseSpec(activation=GaussianMultiplicative(0.0))
    values = []
    for pack in (True, False):
        for split in (True, False):
            with Engine(model, test.x, test.y, spec, seed=9, repeats=4, pack=pack, split=split, chunk_size=100) as e:
                values.append([m.values for m in e.accuracy([0.3, 1.0], sites=[5])])
    assert all(v == values[0] for v in values)


def test_logits_follow_the_original_sample_order(digits_run):
    from nora.train import load_model

    model, _ = load_model(digits_run)
    test = load_dataset("digits", "test")
    with Engine(model, test.x, test.y, NoiseSpec(activation=GaussianAdditive(0.0)), repeats=2) as engine:
        clean = engine.logits(0.0)
        assert torch.allclose(clean, model(test.x), atol=1e-5)
        assert not torch.equal(engine.logits(1.0, repeat=0), engine.logits(1.0, repeat=1))
        assert torch.equal(engine.logits(1.0, repeat=1), engine.logits(1.0, repeat=1))


# ------------------------------------------------------------------------------ site policy
def test_site_policy_categories_norms_pools_and_user_types():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.GroupNorm(2, 4), nn.InstanceNorm1d(4),
                          nn.MaxPool1d(2), Gate(), nn.Flatten(), nn.LayerNorm(12), nn.Linear(12, 3))
    x = torch.zeros(2, 2, 8)
    default = [s.module_type for s in discover_sites(model, x)]
    assert default == ["Input", "Conv1d", "BatchNorm1d", "GroupNorm", "InstanceNorm1d", "MaxPool1d", "LayerNorm", "Linear"]
    no_bn = [s.module_type for s in discover_sites(model, x, SitePolicy(batch_norm=False))]
    assert "BatchNorm1d" not in no_bn and "GroupNorm" in no_bn
    only = [s.module_type for s in discover_sites(model, x, SitePolicy(include=("conv", "linear")))]
    assert only == ["Conv1d", "Linear"]
    without_norms = [s.module_type for s in discover_sites(model, x, SitePolicy(exclude=("norm", "input")))]
    assert without_norms == ["Conv1d", "MaxPool1d", "Linear"]
    with_gate = [s.module_type for s in discover_sites(model, x, SitePolicy(extra=(Gate,)))]
    assert "Gate" in with_gate
    assert "Gate" not in [s.module_type for s in discover_sites(model, x)]  # no global state left behind
    pools3d = nn.Sequential(nn.Conv3d(1, 2, 3), nn.AvgPool3d(2), nn.AdaptiveMaxPool3d(1))
    assert [s.module_type for s in discover_sites(pools3d, torch.zeros(1, 1, 6, 6, 6))][-2:] == ["AvgPool3d",
                                                                                               "AdaptiveMaxPool3d"]
    with pytest.raises(NoraError, match="did you mean 'ReLU'"):
        SitePolicy(types=("relu",))
    with pytest.raises(NoraError, match="unknown site category 'norms'"):
        SitePolicy(include=("norms",))


def test_recurrent_outputs_take_noise():
    model = nn.LSTM(4, 6, batch_first=True)
    sites = discover_sites(model, torch.zeros(2, 5, 4))
    assert [s.module_type for s in sites] == ["Input", "LSTM"] and sites[1].output_shape == (5, 6)
    x = torch.randn(3, 5, 4)
    clean_out, (clean_h, _) = model(x)
    with attach(model, GaussianAdditive(0.5), sites=[1], seed=0):
        noisy_out, (noisy_h, _) = model(x)
    assert not torch.allclose(clean_out, noisy_out)  # the sequence output is noisy
    assert torch.equal(clean_h, noisy_h)  # the layers-first hidden state is not a per-sample tensor
    cell = nn.GRUCell(4, 6)
    assert [s.module_type for s in discover_sites(cell, torch.zeros(2, 4))] == ["Input", "GRUCell"]


def test_failed_lazy_attach_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = torch.randn(3, 4)
    reference = model(x)
    handle = attach(model, GaussianAdditive(0.1), sites=[7])
    with pytest.raises(NoraError, match="out of range"):
        model(x)
    assert nora.sim.injector_of(model) is None and torch.equal(model(x), reference)
    attach(model, GaussianAdditive(0.1)).detach()  # attaching again works
    del handle


# ------------------------------------------------------------------------------ devices and bad input
def test_devices_are_checked_with_a_clear_error():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(NoraError, match=r"device 'cuda' does not exist; this machine has: cpu"):
            resolve_device("cuda")
    with pytest.raises(NoraError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2, device="meta"))
    with pytest.raises(NoraError, match="on several devices"):
        model_device(mixed)


def test_bad_specifications_fail_with_one_line():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x, y = torch.randn(20, 4), torch.randint(0, 4, (20,))
    with pytest.raises(NoraError, match="site index 9 out of range"):
        Engine(model, x, y, NoiseSpec(activation=GaussianAdditive(0.1), sites=[9]))
    with pytest.raises(NoraError, match="budget needs a per-site sigma map"):
        NoiseSpec(activation=GaussianAdditive(0.1), budget=1.0)
    handle = attach(model, GaussianAdditive(0.1, relative="std"), example_input=x)
    with pytest.raises(NoraError, match="relative sigma needs calibration data"):
        model(x)
    handle.detach()
    with pytest.raises(NoraError, match="calibration samples must be an integer >= 1"):
        NoiseSpec(activation=GaussianAdditive(0.1), calibration_samples=0)
    with pytest.raises(NoraError, match="does not exist"):
        Engine(model, x, y, NoiseSpec(), device="cuda:7")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the device tool lends one)")
def test_noise_is_drawn_on_the_gpu_and_repeats_match_the_spec():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(256, 16), torch.randint(0, 4, (256,))
    with Engine(model, x, y, NoiseSpec(activation=GaussianAdditive(0.0)), repeats=3, device="cuda") as engine:
        assert next(model.parameters()).device.type == "cuda"
        first = engine.accuracy([0.5])
        assert engine.injector.streams[0].generator(torch.device("cuda:0")).device.type == "cuda"
        assert engine.accuracy([0.5])[0].values == first[0].values


def test_curve_aggregates_mu_over_noise_seeds(capsys, digits_run, tmp_path):
    out = _cli(capsys, "curve", "--checkpoint", digits_run, "--sigma-range", "0.01", "100", "--per-decade", "1",
               "--repeats", "2", "--seeds", "3", "--output", tmp_path / "c")
    data = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert len(data["curves"]) == 3 and data["over_seeds"][0]["n"] == 3
    mus = [c["midpoint"]["mu"] for c in data["curves"]]
    assert data["over_seeds"][0]["mu_mean"] == pytest.approx(sum(mus) / 3)
    assert len(set(mus)) == 3  # three different noise seeds
    assert "over 3 noise seeds" in out


def test_naive_walk_honours_site_repeats(digits_run):
    from nora.analysis import naive_walk
    from nora.train import load_model

    model, _ = load_model(digits_run)
    test = load_dataset("digits", "test")
    # Four repeats of additive noise at sigma 2 are, in distribution and in draws, one at sigma 1.
    repeated = naive_walk(model, test.x, test.y, GaussianAdditive(0.0), [2.0], num_classes=10, repeats=2,
                          sites=[3], site_repeats=4)
    single = naive_walk(model, test.x, test.y, GaussianAdditive(0.0), [1.0], num_classes=10, repeats=2, sites=[3])
    assert repeated.sites[0].measurements[0].values == single.sites[0].measurements[0].values
    assert repeated.sites[0].cost["overhead"] == 4.0 and single.sites[0].cost["overhead"] == 1.0


def test_config_keys_are_listed_and_yaml_errors_name_the_line(capsys, tmp_path):
    assert main(["config", "keys", "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    assert {"eval.noise.policy.batch_norm", "eval.noise.weight.sigma", "train.device", "eval.noise.hardware"} <= set(keys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n   lr: 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML at line 3" in capsys.readouterr().err


def test_results_of_another_question_are_never_overwritten(capsys, digits_run, tmp_path):
    base = ["eval", "--checkpoint", digits_run, "--repeats", "1", "--output", tmp_path / "e"]
    _cli(capsys, *base, "--sigma", "0.1")
    first = json.loads((tmp_path / "e.json").read_text())
    _cli(capsys, *base, "--sigma", "0.2")  # another question: kept beside the first
    assert json.loads((tmp_path / "e.json").read_text()) == first
    assert json.loads((tmp_path / "e-2.json").read_text())["rows"][0]["sigma"] == 0.2
    _cli(capsys, *base, "--sigma", "0.1")  # the same question again: the same place, the same numbers
    assert json.loads((tmp_path / "e.json").read_text())["rows"] == first["rows"]
    assert not (tmp_path / "e-3.json").exists()
