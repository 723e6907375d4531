"""Training-noise schedules: values, seeding, VANT statistics, config validation, trainer hook."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import nora
from nora import NoraError
from nora.cli import main
from nora.config import apply_overrides, parse_config
from nora.noise import GaussianAdditive
from nora.train import train
from nora.train.schedules import (
    SCHEDULES,
    THETA_TABLE,
    Schedule,
    default_theta,
    make_schedule,
    register_schedule,
)

HALF_NORMAL_MEAN = math.sqrt(2 / math.pi)
HALF_NORMAL_STD = math.sqrt(1 - 2 / math.pi)


def test_constant_and_warmup_ramp():
    assert make_schedule("constant", sigma=0.3, epochs=5).scale(3, 7, 32) == 1.0
    warm = make_schedule("warmup", sigma=0.3, epochs=10, warmup_epochs=4)
    assert [warm.scale(e, 0, 8) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_overshoot_rises_to_peak_and_settles_to_one():
    s = make_schedule("overshoot", sigma=0.5, epochs=8, peak=2.0, warmup_epochs=2, settle_epochs=4)
    values = [s.scale(e, 0, 4) for e in range(8)]
    assert values == pytest.approx([0.0, 1.0, 2.0, 1.75, 1.5, 1.25, 1.0, 1.0])
    default = make_schedule("overshoot", sigma=0.5, epochs=5, peak=1.5)
    assert default.scale(0, 0, 1) == 1.5 and default.scale(4, 0, 1) == pytest.approx(1.1)


def test_sigma_of_sigma_is_one_level_per_epoch_seeded():
    s = make_schedule("sigma_of_sigma", sigma=0.4, epochs=2000, spread=0.2, seed=3)
    assert s.scale(5, 0, 16) == s.scale(5, 9, 16)  # same level for every batch of an epoch
    levels = torch.tensor([s.scale(e, 0, 1) for e in range(2000)])
    assert levels.min() >= 0
    # mean 1 and std 0.2 (clipping at 0 is 5 sigma away): 5-sigma bounds for 2000 draws
    assert abs(levels.mean() - 1) < 5 * 0.2 / math.sqrt(2000)
    assert abs(levels.std() - 0.2) < 0.02
    again = make_schedule("sigma_of_sigma", sigma=0.4, epochs=2000, spread=0.2, seed=3)
    assert again.scale(17, 0, 1) == s.scale(17, 0, 1)
    other = make_schedule("sigma_of_sigma", sigma=0.4, epochs=2000, spread=0.2, seed=4)
    assert other.scale(17, 0, 1) != s.scale(17, 0, 1)


def test_vant_draws_per_sample_levels_with_the_research_formula():
    sigma, alpha, theta = 0.5, 0.45, 0.25
    s = make_schedule("vant", sigma=sigma, epochs=10, warmup_epochs=2, seed=1)
    assert s.theta_value == theta  # table entry for 0.5
    assert s.scale(0, 0, 64) == 0.0 and s.scale(1, 3, 64) == 0.5  # warm-up: scalar ramp
    factors = torch.cat([s.scale(e, b, 1000) for e in range(2, 10) for b in range(25)])
    assert factors.shape == (200_000,)
    sigma_i = factors * sigma
    assert sigma_i.min() >= alpha * sigma
    # sigma_i = alpha*sigma + theta*|z|: mean and std of a half-normal, 6-sigma bounds
    n = sigma_i.numel()
    assert abs(sigma_i.mean() - (alpha * sigma + theta * HALF_NORMAL_MEAN)) < 6 * theta * HALF_NORMAL_STD / math.sqrt(n)
    assert abs(sigma_i.std() - theta * HALF_NORMAL_STD) < 0.01 * theta


def test_vant_factor_depends_only_on_seed_epoch_batch():
    s = make_schedule("vant", sigma=1.1, epochs=4, seed=7)
    first = s.scale(2, 5, 32)
    s.scale(0, 0, 32), s.scale(3, 1, 32)  # other draws in between change nothing
    assert torch.equal(first, s.scale(2, 5, 32))
    assert not torch.equal(first, s.scale(2, 6, 32))
    assert not torch.equal(first, make_schedule("vant", sigma=1.1, epochs=4, seed=8).scale(2, 5, 32))


def test_default_theta_from_the_table():
    for sigma, theta in THETA_TABLE:
        assert default_theta(sigma) == (theta, f"table entry for sigma_train={sigma:g}")
    theta, how = default_theta(0.4)
    assert theta == pytest.approx(0.15) and "interpolated between" in how and "0.3" in how and "0.5" in how
    assert default_theta(1.8)[0] == pytest.approx(0.86)  # between 1.7 -> 0.96 and 1.9 -> 0.76
    assert default_theta(0.05) == (0.05, "nearest table entry (sigma_train=0.1; table starts there)")
    assert default_theta(5.0)[0] == 0.86 and "table ends" in default_theta(5.0)[1]
    given = make_schedule("vant", sigma=0.4, epochs=3, theta=0.3)
    assert given.theta_value == 0.3 and "given" in given.describe()


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("vant", {"alpha": -0.1}, "alpha must be a finite number >= 0"),
        ("vant", {"theta": -1.0}, "theta must be a finite number >= 0"),
        ("vant", {"warmup_epochs": 6}, "exceeds the 5 training epochs"),
        ("warmup", {"warmup_epochs": 9}, "exceeds the 5 training epochs"),
        ("overshoot", {"peak": 0.5}, "peak must be >= 1"),
        ("overshoot", {"warmup_epochs": 3, "settle_epochs": 3}, "exceeds the 5 training epochs"),
        ("sigma_of_sigma", {"spread": float("nan")}, "spread must be a finite number"),
        ("constant", {"alpha": 0.4}, "does not take alpha; it takes no parameters"),
        ("nope", {}, "unknown noise schedule 'nope'"),
    ],
)
def test_bad_schedule_parameters(name, params, message):
    with pytest.raises(NoraError, match=message):
        make_schedule(name, sigma=0.5, epochs=5, **params)


def test_vant_needs_a_training_sigma():
    with pytest.raises(NoraError, match="needs a training sigma > 0"):
        make_schedule("vant", sigma=0.0, epochs=5)


@pytest.mark.parametrize(
    "schedule,epochs,message",
    [
        ({"name": "vant", "alpha": -1}, 5, "bad value for 'train.noise_schedule.alpha': alpha must be a finite number >= 0"),
        ({"name": "vant", "theta": -0.5}, 5, "bad value for 'train.noise_schedule.theta': theta must be"),
        ({"name": "vant", "warmup_epochs": 8}, 5, "bad value for 'train': noise_schedule warm-up (8 epochs) is longer than training (5 epochs)"),
        ({"name": "overshoot", "warmup_epochs": 2, "settle_epochs": 4}, 5, "plus settling (4 epochs) is longer"),
        ({"name": "vant", "beta": 1}, 5, "unknown key 'train.noise_schedule.beta'"),
    ],
)
def test_bad_schedule_config_is_one_clear_line(schedule, epochs, message):
    with pytest.raises(NoraError) as info:
        parse_config({"train": {"epochs": epochs, "noise_schedule": schedule}, "train_noise": {"sigma": 0.3}}, "run.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "schedule,message",
    [
        ({"name": "linear-ish"}, "unknown noise schedule 'linear-ish'"),
        ({"name": "warmup", "theta": 0.1}, "schedule 'warmup' does not take theta; it takes warmup_epochs"),
    ],
)
def test_unknown_schedules_are_refused_before_the_run_folder_exists(tmp_path, schedule, message):
    from rich.console import Console

    from nora.train import train

    config = parse_config({"output_dir": str(tmp_path), "name": "bad", "train": {"epochs": 2, "noise_schedule": schedule},
                           "train_noise": {"sigma": 0.3}})
    with pytest.raises(NoraError) as info:
        train(config, console=Console(quiet=True))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_schedule_keys_work_with_overrides():
    config = parse_config({"train_noise": {"sigma": 0.3}})
    config = apply_overrides(config, {"train.noise_schedule.name": "vant", "train.noise_schedule.alpha": 0.6})
    assert config.train.noise_schedule.params() == {"alpha": 0.6}


@register_schedule("test-halves")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Halves(Schedule):
    """A user schedule: a lower level on even batches."""

    level: float = 0.5

    def scale(self, epoch, batch_index, batch_size):
        return self.level if batch_index % 2 == 0 else 1.0


def _digits_config(tmp_path, schedule, epochs=2, sigma=0.3, **extra):
    return parse_config({
        "name": "sched", "output_dir": str(tmp_path), "seed": 0,
        "data": {"dataset": "digits", "batch_size": 100, "train_subset": 250, "test_subset": 100},
        "model": {"arch": "mlp", "kwargs": {"hidden": [16]}},
        "train": {"epochs": epochs, "progress": False, "noise_schedule": schedule},
        "train_noise": {"kind": "additive", "sigma": sigma} if sigma is not None else None,
        **extra,
    })


def test_user_schedule_is_registered_and_called_per_batch(tmp_path, monkeypatch):
    assert SCHEDULES["test-halves"] is Halves
    seen = []
    original = Halves.scale

    def spy(self, epoch, batch_index, batch_size):
        seen.append((epoch, batch_index, batch_size, original(self, epoch, batch_index, batch_size)))
        return seen[-1][-1]

    monkeypatch.setattr(Halves, "scale", spy)
    result = train(_digits_config(tmp_path, {"name": "test-halves", "options": {"level": 0.25}}))
    # 250 samples in batches of 100: sizes 100, 100, 50 in each of 2 epochs; the option reached the schedule
    assert seen == [(e, b, n, 0.25 if b % 2 == 0 else 1.0) for e in range(2) for b, n in enumerate([100, 100, 50])]
    assert result.metrics[0]["noise_scale"] == pytest.approx((0.25 * 150 + 100) / 250)


def test_trainer_logs_the_mean_scale_per_epoch(tmp_path):
    result = train(_digits_config(tmp_path, {"name": "vant", "warmup_epochs": 1}, epochs=3, sigma=0.5))
    scales = [m["noise_scale"] for m in result.metrics]
    assert scales[0] == 0.0
    expected = 0.45 + (0.25 / 0.5) * HALF_NORMAL_MEAN
    bound = 6 * (0.25 / 0.5) * HALF_NORMAL_STD / math.sqrt(250)
    assert all(abs(s - expected) < bound for s in scales[1:])


def test_vant_run_resumes_to_the_same_numbers(tmp_path):
    schedule = {"name": "vant", "warmup_epochs": 1}
    whole = train(_digits_config(tmp_path / "a", schedule, epochs=3))
    train(_digits_config(tmp_path / "b", schedule, epochs=3), stop_after_epochs=2)
    resumed = train(_digits_config(tmp_path / "b", schedule, epochs=3))
    assert resumed.resumed_from == 2
    assert [m["train_loss"] for m in resumed.metrics] == [m["train_loss"] for m in whole.metrics]


def test_schedule_without_training_noise_is_an_error(tmp_path):
    with pytest.raises(NoraError, match="needs activation noise in training"):
        train(_digits_config(tmp_path, {"name": "vant"}, sigma=None))


def test_bad_schedule_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n  noise_schedule: {name: vant, warmup_epochs: 4}\ntrain_noise: {sigma: 0.3}\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "warm-up (4 epochs) is longer than training (3 epochs)" in err
    path.write_text("train: {epochs: 3}\ntrain_noise: {sigma: 0.3}\n")
    assert main(["train", "--config", str(path), "--set", "train.noise_schedule.name=bogus"]) == 2
    assert "unknown noise schedule 'bogus'" in capsys.readouterr().err


def test_per_sample_scale_is_shared_by_every_site():
    """sigma_scale [B] sets one level per sample at every site: a zero row stays clean everywhere."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    injector = nora.attach(model, GaussianAdditive(0.5), example_input=torch.zeros(2, 4), seed=0)
    x = torch.randn(3, 4)
    with torch.no_grad():
        injector.enabled = False
        clean = model(x)
        injector.enabled = True
        injector.sigma_scale = torch.tensor([0.0, 1.0, 0.0])
        noisy = model(x)
    assert torch.equal(noisy[0], clean[0]) and torch.equal(noisy[2], clean[2])
    assert not torch.allclose(noisy[1], clean[1])


def test_per_sample_multiplicative_matches_the_scalar_path():
    """The per-sample path (VANT) computes the same noise as a scalar sigma when all levels agree."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 4)
    outputs = []
    for scale in (0.7, torch.full((5,), 0.7)):
        with nora.attach(model, nora.GaussianMultiplicative(0.4), example_input=x[:2], seed=2) as injector:
            injector.sigma_scale = scale
            with torch.no_grad():
                outputs.append(model(x))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[0], model(x))
