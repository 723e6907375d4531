import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from nora.cli import main  # noqa: E402
from nora.compress.actions import (  # noqa: E402
    BIT_CHOICES,
    FakeQuant,
    LayerPolicy,
    apply_policy,
    bits_of,
    check_model,
    compute_layers,
    kept_channels,
    policy_from_actions,
    prune,
    quantise_weight,
)
from nora.compress.agents import DDPGAgent  # noqa: E402
from nora.compress.search import LayerWalk, SearchSettings, reward_of  # noqa: E402
from nora.compress.sensitivity import layer_sensitivity  # noqa: E402
from nora.compress.workflow import compress, resume  # noqa: E402
from nora.errors import NoraError  # noqa: E402
from nora.models import build_model  # noqa: E402
from nora.perf import latency as lat  # noqa: E402
from nora.perf.layers import layer_specs  # noqa: E402
from nora.seeds import SeedTree  # noqa: E402

FAST = dict(eval_samples=120, sensitivity_samples=32, retrain_epochs=0, timing_repeats=2)


@pytest.fixture(scope="module")
def checkpoint(digits_lenet5_run):
    return digits_lenet5_run


def test_layers_the_pruner_cannot_handle_are_named():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.LSTM(4, 4))
    with pytest.raises(NoraError, match=r"0 \(grouped Conv2d, groups=2\), 2 \(LSTM\)"):
        check_model(model)


def test_pruning_follows_dependencies_and_rounds_channels():
    model = build_model("resnet8", input_shape=(3, 8, 8)).eval()
    layers = compute_layers(model, (3, 8, 8))
    assert not layers[-1].prunable and all(l.prunable for l in layers[:-1])
    policy = [LayerPolicy(l.name, 0.4 if l.prunable else 0.0) for l in layers]
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pruned, compressed = apply_policy(model, (3, 8, 8), policy, x, round_to=8)
    specs = dict(layer_specs(pruned, (3, 8, 8)))
    assert all(specs[l.name].out_channels % 8 == 0 for l in layers if l.prunable)
    assert specs["layers.2.0.conv2"].out_channels < 64 and specs["fc"].out_channels == 10
    # residual coupling: the block's output and its shortcut keep the same width
    assert specs["layers.1.0.conv2"].out_channels == specs["layers.1.0.shortcut.0"].out_channels
    assert compressed(x).shape == (4, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_kept_channels_round_to_a_multiple_and_deep_pruning_still_prunes():
    assert [kept_channels(16, s, 8) for s in (0.0, 0.2, 0.3, 0.6, 0.9)] == [16, 16, 8, 8, 8]
    assert kept_channels(64, 0.6, 8) == 24 and kept_channels(6, 0.9, 8) == 6 and kept_channels(10, 0.5, 0) == 5
    assert kept_channels(84, 0.0, 8) == 84 and kept_channels(84, 0.05, 8) == 80
    model = build_model("lenet5", input_shape=(1, 28, 28))
    pruned = prune(model, (1, 28, 28), {"features.3": 0.76, "classifier.1": 0.76}, round_to=8)
    widths = {name: (s.in_channels, s.out_channels) for name, s in layer_specs(pruned, (1, 28, 28))}
    # 16 -> 8 channels, and the flattened input of the next layer follows (8 x 4 x 4)
    assert widths["features.3"] == (6, 8) and widths["classifier.1"] == (128, 32)


def test_fake_quantisation_levels_and_straight_through_gradient():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    q = quantise_weight(w, 3)
    for channel in q.detach():
        assert len(torch.unique(channel)) <= 2 ** 3 - 1
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    layer = FakeQuant(nn.Linear(5, 2), 32, 2)
    layer.calibrating = True
    layer(torch.rand(10, 5))
    layer.calibrating = False
    quantised = layer._quantise_input(torch.rand(50, 5))
    assert len(torch.unique(quantised)) <= 4 and quantised.min() >= 0  # unsigned: ReLU-like inputs


def test_actions_map_to_policies():
    assert bits_of(0.0) == 2 and bits_of(1.0) == 32 and bits_of(0.874) == 8 and len(BIT_CHOICES) == 8
    model = build_model("lenet5", input_shape=(1, 8, 8), num_classes=3)
    layers = compute_layers(model, (1, 8, 8))
    joint = policy_from_actions(layers, [[1.0, 0.0, 0.5]] * len(layers), "joint", max_sparsity=0.5)
    assert [p.sparsity for p in joint] == [0.5] * (len(layers) - 1) + [0.0]
    assert {(p.w_bits, p.a_bits) for p in joint} == {(2, 6)}
    prune_only = policy_from_actions(layers, [[0.5]] * len(layers), "prune")
    assert {(p.w_bits, p.a_bits) for p in prune_only} == {(32, 32)}


def test_reward_formula():
    s = SearchSettings(checkpoint="x", target=0.25)
    assert reward_of(0.9, 2.5, 10.0, s) == pytest.approx(0.9)
    assert reward_of(0.9, 5.0, 10.0, s) == pytest.approx(0.9 - 5.0)
    hinge = SearchSettings(checkpoint="x", target=0.25, reward="hinge")
    assert reward_of(0.9, 1.0, 10.0, hinge) == pytest.approx(0.9)


def test_sensitivity_grows_with_compression_and_is_cached(tmp_path, monkeypatch, checkpoint):
    from nora.train.checkpoint import load_model

    model, _ = load_model(checkpoint)
    layers = compute_layers(model, (1, 8, 8))
    from nora.data import load_dataset

    x = load_dataset("digits", split="test").x[:64]
    sens = layer_sensitivity(model, (1, 8, 8), layers, x, "quant", cache_path=tmp_path / "s.json")
    # settings are 2, 4, 8 bits: fewer bits move the outputs further
    assert all(v[0] >= v[2] >= 0 for v in sens.values())
    assert any(v[0] > 0 for v in sens.values())
    import nora.compress.sensitivity as module

    monkeypatch.setattr(module, "apply_policy", lambda *a, **k: pytest.fail("recomputed a cached sensitivity"))
    assert layer_sensitivity(model, (1, 8, 8), layers, x, "quant", cache_path=tmp_path / "s.json") == sens


def test_ddpg_leaves_torchs_global_generator_alone():
    layers = compute_layers(build_model("lenet5", input_shape=(1, 8, 8), num_classes=3), (1, 8, 8))
    env = LayerWalk(layers, "joint", {l.name: [0.0] * 6 for l in layers}, 0.8)
    before = torch.random.get_rng_state()
    agent = DDPGAgent(env, SeedTree(0), warmup=1, batch_size=4)
    for episode in range(3):
        states, actions = agent.propose(episode)
        agent.observe(episode, states, actions, reward=float(episode))
    assert torch.equal(before, torch.random.get_rng_state())
    assert len(agent.buffer["r"]) == 3 * len(layers)
    assert all(0.0 <= a <= 1.0 for acts in actions for a in acts)


def test_bad_target_is_one_clear_error(checkpoint):
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(NoraError, match=r"must lie in \(0, 1\]"):
            compress(checkpoint, target=bad)
    assert main(["compress", "--checkpoint", checkpoint, "--target", "2"]) == 2  # one `error:` line, exit 2


def _episodes(folder) -> list[dict]:
    rows = json.loads((Path(folder) / "episodes.json").read_text())
    return [{k: e[k] for k in ("episode", "accuracy", "latency_s", "reward", "policy")} for e in rows]


@pytest.mark.parametrize("agent", ["ddpg", "random", "greedy"])
def test_interrupted_search_resumes_to_the_same_episodes(tmp_path, checkpoint, agent):
    options = dict(agent=agent, episodes=6, ddpg_warmup=2, backend="bitops", **FAST)
    whole = compress(checkpoint, tmp_path / "whole", **options)
    part = compress(checkpoint, tmp_path / "part", stop_after=4, **options)
    assert part == {"out": str(tmp_path / "part"), "finished": False, "episodes": 4}
    resumed = resume(tmp_path / "part")
    assert resumed["finished"] and _episodes(tmp_path / "part") == _episodes(tmp_path / "whole")
    timings = {"retrain_s", "search_s", "cache_hit_rate"}
    assert ({k: v for k, v in resumed["final"].items() if k not in timings}
            == {k: v for k, v in whole["final"].items() if k not in timings})
    from nora.report.files import save
    from nora.workflows.results import CompressResult

    written = save(CompressResult(tmp_path / "part", resumed))  # the one report writer saves a finished search
    assert sorted(p.name for p in written) == ["episodes.csv", "pareto.png", "policy.csv", "result.json"]
    stored = json.loads((tmp_path / "part" / "result.json").read_text())
    assert stored["final"] == json.loads(json.dumps(resumed["final"])) and "records" not in stored
    assert (tmp_path / "part" / "episodes.csv").read_text().count("\n") == 6 + 1


def test_greedy_starts_from_the_uncompressed_model_and_steps_one_layer(tmp_path, checkpoint):
    compress(checkpoint, tmp_path / "g", agent="greedy", episodes=8, backend="bitops", **FAST)
    rows = json.loads((tmp_path / "g" / "episodes.json").read_text())
    assert all(p["sparsity"] == 0 and p["w_bits"] == 32 for p in rows[0]["policy"])
    assert rows[0]["latency_ratio"] == pytest.approx(1.0)
    # every later candidate changes exactly one layer of the best policy found before it
    best = rows[0]
    for row in rows[1:]:
        changed = [a != b for a, b in zip(row["policy"], best["policy"])]
        assert sum(changed) <= 1
        if row["reward"] >= best["reward"]:
            best = row


def test_parallel_workers_give_the_same_episodes(tmp_path, checkpoint):
    options = dict(agent="random", episodes=4, batch=2, backend="bitops", **FAST)
    compress(checkpoint, tmp_path / "one", workers=1, **options)
    compress(checkpoint, tmp_path / "two", workers=2, **options)
    assert _episodes(tmp_path / "one") == _episodes(tmp_path / "two")


def test_compile_failures_are_recorded_and_the_search_goes_on(tmp_path, checkpoint, monkeypatch):
    real = lat._KERNELS["onnxruntime"]

    def failing(spec):
        if spec.quantised:
            raise RuntimeError("simulated compiler failure")
        return real(spec)

    monkeypatch.setitem(lat._KERNELS, "onnxruntime", failing)
    result = compress(checkpoint, tmp_path / "f", agent="random", episodes=3, backend="onnxruntime", **FAST)
    rows = json.loads((tmp_path / "f" / "episodes.json").read_text())
    assert result["finished"] and len(rows) == 3
    failed = [f for e in rows for f in e["failures"]]
    assert failed and all("simulated compiler failure" in f["error"] for f in failed)
    assert sum(e["estimated_layers"] for e in rows) >= len(failed)


def test_a_folder_of_another_search_is_refused(tmp_path, checkpoint):
    compress(checkpoint, tmp_path / "s", agent="random", episodes=1, backend="bitops", **FAST)
    with pytest.raises(NoraError, match="holds a different search .*episodes"):
        compress(checkpoint, tmp_path / "s", agent="random", episodes=2, backend="bitops", **FAST)


@pytest.mark.slow
def test_a_killed_search_resumes(tmp_path, checkpoint, killed_search):
    """A real SIGKILL in the middle of a DDPG search; the resumed folder equals an uninterrupted one."""
    args = ["--checkpoint", checkpoint, "--agent", "ddpg", "--episodes", "14", "--ddpg-warmup", "3",
            "--backend", "bitops", "--eval-samples", "120", "--sensitivity-samples", "32", "--retrain-epochs", "0"]
    killed = tmp_path / "killed"
    done = killed_search(args, killed, timeout=90)
    assert 0 < done < 14, "the search should have been killed part-way"
    assert main(["compress", "--resume", str(killed)]) == 0
    assert main(["compress", *args, "--out", str(tmp_path / "whole")]) == 0
    assert _episodes(killed) == _episodes(tmp_path / "whole")


def test_config_file_drives_the_search_and_unknown_keys_are_refused(tmp_path, checkpoint):
    good = tmp_path / "good.yaml"
    good.write_text(f"checkpoint: {checkpoint}\nagent: random\nepisodes: 2\nbackend: bitops\neval_samples: 120\n"
                    "sensitivity_samples: 32\nretrain_epochs: 0\n")
    assert main(["compress", "--config", str(good), "--out", str(tmp_path / "c"), "--episodes", "3"]) == 0
    assert json.loads((tmp_path / "c" / "result.json").read_text())["episodes"] == 3  # the flag overrides the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("agnet: random\n")
    from nora.compress.workflow import read_settings_file

    with pytest.raises(NoraError, match="unknown compression setting 'agnet'"):
        read_settings_file(bad)
    assert main(["compress", "--config", str(bad)]) == 2
