"""Lengthening a run (--resume/--extend), progress a log file can read, and the messages of typos."""

import io
import json

import pytest
from rich.console import Console

from nora import progress as progress_module
from nora.cli import main
from nora.config import parse_config
from nora.errors import NoraError
from nora.progress import Reporter, duration
from nora.train import extended, train
from nora.train.trainer import cosine_cycles


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def digits_config(tmp_path, name, epochs, **train):
    return parse_config({"name": name, "output_dir": str(tmp_path), "seed": 3,
                         "data": {"dataset": "digits", "batch_size": 64},
                         "model": {"arch": "lenet5"}, "train": {"epochs": epochs, "lr": 2e-3, "progress": False, **train}})


# ------------------------------------------------------------------ extend
def test_cosine_cycles_restart_at_each_extension():
    factor = cosine_cycles(6, [4])
    assert [factor(e) for e in (0, 4)] == [1.0, 1.0]
    assert factor(2) == pytest.approx(0.5) and factor(5) == pytest.approx(0.5)
    assert cosine_cycles(4, [])(4) == pytest.approx(0.0, abs=1e-12)


def test_extended_run_equals_a_run_trained_that_long_from_the_start(tmp_path):
    """2 epochs, then --extend 2, bit for bit the run that had lr_restarts=[2] and 4 epochs from the start."""
    short = digits_config(tmp_path, "grown", 2)
    train(short)
    longer = extended(short, 2)
    assert longer.train.epochs == 4 and longer.train.lr_restarts == [2]
    grown = train(longer, extend=True)
    direct = train(digits_config(tmp_path, "direct", 4, lr_restarts=[2]))
    assert grown.resumed_from == 2
    assert (tmp_path / "grown" / "model.safetensors").read_bytes() == (tmp_path / "direct" / "model.safetensors").read_bytes()
    assert [m["train_loss"] for m in grown.metrics] == [m["train_loss"] for m in direct.metrics]
    # the folder's config is the longer one now, so a plain resume sees a finished run
    assert "lr_restarts:\n  - 2" in (tmp_path / "grown" / "config.yaml").read_text()
    # the added epochs run a new cosine cycle (half the rate after its first epoch), not the final rate of zero
    assert grown.metrics[2]["lr"] == pytest.approx(1e-3)


def test_constant_rate_extension_needs_no_restart(tmp_path):
    cfg = digits_config(tmp_path, "flat", 1, scheduler="none")
    train(cfg)
    assert extended(cfg, 1).train.lr_restarts == []
    grown = train(extended(cfg, 1), extend=True)
    direct = train(digits_config(tmp_path, "flat-direct", 2, scheduler="none"))
    assert [m["train_loss"] for m in grown.metrics] == [m["train_loss"] for m in direct.metrics]


def test_extension_of_a_stretching_noise_schedule_is_refused(tmp_path):
    cfg = parse_config({**json.loads(digits_config(tmp_path, "overshoot", 2).model_dump_json()),
                        "train_noise": {"sigma": 0.1},
                        "train": {"epochs": 2, "progress": False, "noise_schedule": {"name": "overshoot", "peak": 2.0}}})
    train(cfg)
    with pytest.raises(NoraError, match="stretches with the number of epochs"):
        train(extended(cfg, 2), extend=True)


def test_resume_and_extend_from_the_command_line(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: cli\noutput_dir: {tmp_path}\ndata: {{dataset: digits}}\nmodel: {{arch: lenet5}}\n"
                   "train: {epochs: 1, progress: false}\n")
    assert run(capsys, "train", "--config", str(cfg))[0] == 0
    folder = tmp_path / "cli"
    evaluate = ("eval", "--checkpoint", str(folder), "--sigma", "0.1", "--repeats", "1")
    assert run(capsys, *evaluate)[0] == 0
    code, _, err = run(capsys, "train", "--resume", str(folder), "--extend", "1")
    assert code == 0 and "extending" in err and "resuming" in err
    assert len(json.loads((folder / "model.json").read_text())["config"]["train"]["lr_restarts"]) == 1
    # the evaluation of the longer model does not overwrite the shorter one's (other weights, other question)
    assert run(capsys, *evaluate)[0] == 0
    assert sorted(p.name for p in (folder / "eval").glob("*.json")) == ["additive-2.json", "additive.json"]
    code, _, err = run(capsys, "train", "--config", str(cfg), "--epochs", "5")
    assert code == 2 and "differs in: train.epochs" in err and "--extend" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--resume", "{tmp}/nothing"], "no run there (no config.yaml)"),
        (["--resume", "{tmp}/x", "--config", "{tmp}/x.yaml"], "give either --config FILE"),
        (["--extend", "2"], "--extend N lengthens a run"),
        (["--resume", "{tmp}/made", "--name", "other"], "--name and --output-dir choose a new run"),
        (["--resume", "{tmp}/made", "--extend", "0"], "--extend needs a positive number of epochs"),
        (["--resume", "{tmp}/empty", "--extend", "1"], "holds no trained epoch to extend"),
    ],
)
def test_bad_resume_and_extend_is_one_clear_line(capsys, tmp_path, argv, message):
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "config.yaml").write_text(digits_config(tmp_path, "made", 1).model_dump_json())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text(digits_config(tmp_path, "empty", 1).model_dump_json())
    code, _, err = run(capsys, "train", *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and err.startswith("error:") and message in err, err
    assert not (tmp_path / "empty" / "state.pt").exists()


# ------------------------------------------------------------------ progress
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_lines_carry_rate_and_time_left():
    out = io.StringIO()
    clock = FakeClock()
    with Reporter(Console(file=out, width=200), unit="batches", interval=10, clock=clock) as progress:
        progress.start("epoch 1/3", 100)
        for _ in range(100):
            clock.now += 0.5  # 2 batches/s
            progress.advance(loss=0.25)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one line per 10 s of a 50 s task
    assert lines[0] == "epoch 1/3: 20/100 batches (20%), 2 batches/s, 40 s left, loss 0.2500"
    assert lines[-1].startswith("epoch 1/3: 100/100 batches (100%)") and "0 s left" in lines[-1]


def test_a_terminal_gets_a_bar_and_no_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with Reporter(console, interval=0) as progress:
        progress.start("curve", 3)
        progress.advance(3)
    assert "curve: 3/3" not in out.getvalue()


def test_disabled_progress_is_silent():
    out = io.StringIO()
    with Reporter(Console(file=out), interval=0, enabled=False) as progress:
        progress.start("x", 2)
        progress.advance()
    assert out.getvalue() == ""


def test_durations_read_plainly():
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_training_without_a_terminal_prints_progress_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL", 0.0)
    out = io.StringIO()
    cfg = digits_config(tmp_path, "logged", 1, progress=True)
    train(cfg, console=Console(file=out, width=200))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("epoch 1/1:")]
    assert len(lines) == 22  # 1,347 training digits in batches of 64
    assert lines[-1].startswith("epoch 1/1: 22/22 batches (100%)") and "batches/s" in lines[-1] and "loss" in lines[-1]


def test_curve_without_a_terminal_reports_each_level(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_INTERVAL", 0.0)
    train(digits_config(tmp_path, "curved", 1))
    code, _, err = run(capsys, "curve", "--checkpoint", str(tmp_path / "curved"), "--sigma-range", "0.1", "1",
                       "--per-decade", "2", "--repeats", "1")
    assert code == 0
    assert "curve, seed 0: 1/3 levels (33%)" in err and "curve, seed 0: 3/3 levels (100%)" in err and "sigma 1.0" in err


# ------------------------------------------------------------------ messages
@pytest.mark.parametrize(
    "argv,message",
    [
        (["--set", "train.epochz=1"], "unknown key 'train.epochz' (did you mean 'train.epochs'?)"),
        (["--set", "trian.epochs=1"], "unknown key 'trian.epochs' (did you mean 'train.epochs'?)"),
        (["--set", "colour=blue"], "unknown key 'colour' (`nora config keys` lists them)"),
    ],
)
def test_config_typos_name_the_likely_key(capsys, argv, message):
    code, _, err = run(capsys, "train", *argv)
    assert code == 2 and message in err, err


def test_a_typo_is_named_before_the_key_it_leaves_missing():
    from nora.dynamic.trajectory import parse_trajectory

    with pytest.raises(NoraError, match=r"unknown key 'nuu' \(did you mean 'nu'\?\)"):
        parse_trajectory({"times": [1, 2], "process": {"kind": "power_law", "sigma0": 0.1, "nuu": 0.1}}, "d.yaml")


def test_site_selection_off_by_case_gets_a_suggestion(capsys, tmp_path):
    train(digits_config(tmp_path, "sites", 1))
    code, _, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "sites"), "--sigma", "0.1", "--sites", "relu")
    assert code == 2 and "unknown site 'relu' (did you mean 'ReLU'?)" in err


def test_a_run_saved_with_the_old_cosine_scheduler_resumes(tmp_path):
    """State files written before the cosine became a function of the epoch hold torch's
    CosineAnnealingLR state; resuming one continues at the rate of its next epoch."""
    import torch

    cfg = digits_config(tmp_path, "old", 3)
    train(cfg, stop_after_epochs=1)
    state = torch.load(tmp_path / "old" / "state.pt", weights_only=True)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=2e-3)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    old.step()
    state["scheduler"] = old.state_dict()
    torch.save(state, tmp_path / "old" / "state.pt")
    result = train(cfg)
    assert result.resumed_from == 1 and len(result.metrics) == 3
    assert result.metrics[1]["lr"] == pytest.approx(2e-3 * cosine_cycles(3, [])(2))
