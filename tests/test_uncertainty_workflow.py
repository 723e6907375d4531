"""End to end: repulsive training through ``nora train``, ``nora uncertainty``, fine-tuning, active learning."""

import json

import pytest
import torch

from nora.cli import main
from nora.config import parse_config
from nora.errors import NoraError
from nora.train.trainer import train
from nora.uncertainty.evaluate import evaluate_uncertainty, member_probs


def _config(tmp_path, name, arch="multihead", kwargs=None, objective=None, epochs=4, **extra):
    data = {"name": name, "output_dir": str(tmp_path), "seed": 0,
            "data": {"dataset": "digits", "batch_size": 32, "test_batch_size": 500},
            "model": {"arch": arch, "kwargs": kwargs if kwargs is not None else {"heads": 3}},
            "train": {"epochs": epochs, "lr": 3e-3, "progress": False,
                      "objective": objective or {"name": "repulsive", "options": {"weight": 0.05}}}}
    data["model"].update(extra)
    return parse_config(data)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uruns")
    repulsive = train(_config(tmp, "rep"))
    single = train(_config(tmp, "single", arch="lenet5", kwargs={}, objective={"name": "cross_entropy"}))
    return tmp, repulsive, single


def test_repulsive_training_learns_and_keeps_members_apart(runs):
    _, repulsive, _ = runs
    assert repulsive.test_accuracy > 0.5
    model = repulsive.model
    from nora.data import load_dataset

    probs = member_probs(model, load_dataset("digits", "test").x)
    assert probs.shape[1:] == (3, 10)
    assert not torch.allclose(probs[:, 0], probs[:, 1], atol=1e-3)


def test_uncertainty_cli_writes_report(runs):
    tmp, repulsive, _ = runs
    code = main(["uncertainty", "--checkpoint", str(repulsive.run_dir), "--ood", "digits", "--shift", "blur:1,2",
                 "--noise", "additive", "--sigma", "0.0", "1.0", "--repeats", "2", "--per-head", "--bins", "10"])
    assert code == 0
    out_dir = repulsive.run_dir / "uncertainty"
    for name in ("summary.json", "summary.csv", "reliability.png", "reliability.json", "reliability.csv",
                 "shift.png", "noise.png"):
        assert (out_dir / name).stat().st_size > 0
    summary = json.loads((out_dir / "summary.json").read_text())
    rows = summary["rows"]
    assert [r["condition"] for r in rows] == ["clean", "blur", "blur", "additive noise", "additive noise"]
    assert summary["members"] == 3
    assert len(json.loads((out_dir / "reliability.json").read_text())["rows"]) == 10
    # the engine at sigma 0 reproduces the clean predictions exactly
    clean, zero, loud = rows[0], rows[3], rows[4]
    assert zero["accuracy"] == pytest.approx(clean["accuracy"]) and zero["nll"] == pytest.approx(clean["nll"])
    assert loud["epistemic"] > clean["epistemic"]  # members disagree more under heavy noise
    assert rows[0]["auroc_mi"] == pytest.approx(0.5)  # OOD set == test set: nothing to detect
    from nora.data import load_dataset
    from nora.uncertainty.evaluate import per_head_accuracy

    test = load_dataset("digits", "test")
    heads = per_head_accuracy(repulsive.model, test.x, test.y)
    assert len(heads) == 3 and max(heads) >= clean["accuracy"] - 0.1


def test_head_specific_command_on_single_head_checkpoint(runs):
    from nora.workflows.uncertainty import uncertainty

    _, _, single = runs
    assert main(["uncertainty", "--checkpoint", str(single.run_dir), "--per-head"]) == 2
    with pytest.raises(NoraError, match="single-head 'lenet5'"):
        uncertainty(single.run_dir, per_head=True)
    assert main(["uncertainty", "--checkpoint", str(single.run_dir), "--output", str(single.run_dir / "u")]) == 0
    assert json.loads((single.run_dir / "u" / "summary.json").read_text())["rows"][0]["epistemic"] == 0.0


def test_ood_set_with_other_shape_names_both_shapes(runs):
    _, repulsive, _ = runs
    with pytest.raises(NoraError, match=r"OOD set 'mnist' has input shape \(1, 28, 28\) but the model takes \(1, 8, 8\)"):
        evaluate_uncertainty(repulsive.model, torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                             ood_x=torch.zeros(3, 1, 28, 28), ood_name="mnist")


def test_ood_cli_shape_mismatch_with_real_data(runs, shared_data):
    from nora.workflows.uncertainty import uncertainty

    _, repulsive, _ = runs
    args = ["--ood", "fashion-mnist", "--ood-root", str(shared_data / "fashion-mnist"), "--ood-subset", "50"]
    assert main(["uncertainty", "--checkpoint", str(repulsive.run_dir), *args]) == 2
    with pytest.raises(NoraError, match=r"OOD set 'fashion-mnist' has input shape \(1, 28, 28\) but the model takes \(1, 8, 8\)"):
        uncertainty(repulsive.run_dir, ood="fashion-mnist", ood_root=str(shared_data / "fashion-mnist"), ood_subset=50)


def test_finetune_from_single_head_checkpoint(runs):
    tmp, _, single = runs
    result = train(_config(tmp, "finetune", kwargs={"heads": 3, "freeze_backbone": True}, epochs=1,
                           init_from=str(single.run_dir)))
    tuned, base = result.model, single.model
    assert torch.equal(tuned.features[0].weight, base.features[0].weight)  # loaded and frozen
    assert torch.equal(tuned.classifier[3].weight, base.classifier[3].weight)


def test_baselines_train_through_the_trainer(tmp_path):
    for name, arch, kwargs in (("ens", "ensemble", {"members": 2}), ("mcd", "mcdropout", {"samples": 4})):
        result = train(_config(tmp_path, name, arch=arch, kwargs=kwargs, epochs=2, objective={"name": "heads_nll"}))
        assert result.test_accuracy > 0.2


def test_mc_dropout_cannot_be_repulsive_in_training(tmp_path):
    with pytest.raises(NoraError, match="at least 2 members in training"):
        train(_config(tmp_path, "mcd-rep", arch="mcdropout", kwargs={"samples": 4}, epochs=1))


def test_active_learning_curves():
    from nora.data import load_dataset
    from nora.uncertainty.active import acquire, active_learning

    scores = torch.tensor([0.1, 0.9, 0.5])
    assert acquire(scores, torch.tensor([7, 8, 9]), 2, torch.Generator()).tolist() == [8, 9]
    train_ds, test_ds = load_dataset("digits", "train").subset(300), load_dataset("digits", "test")
    curves = active_learning(train_ds, test_ds, model_kwargs={"backbone": "mlp", "heads": 3,
                                                                "backbone_kwargs": {"hidden": [32]}},
                             initial=10, per_round=10, rounds=2, steps=20, seed=1)
    assert set(curves) == {"epistemic", "aleatoric", "random"}
    for rows in curves.values():
        assert [r["labelled"] for r in rows] == [10, 20, 30]
        assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert curves["random"][0] == curves["epistemic"][0]  # same start, same first model
    with pytest.raises(NoraError, match="acquisition"):
        active_learning(train_ds, test_ds, acquisitions=["margin"])


@pytest.mark.parametrize("argv", [["--shift", "fog:1"], ["--shift", "blur:0..9"], ["--repeats", "0", "--sigma", "0.1"],
                                  ["--bins", "0"], ["--sigma", "-1"]])
def test_uncertainty_cli_bad_input_is_one_error(runs, argv):
    _, repulsive, _ = runs
    assert main(["uncertainty", "--checkpoint", str(repulsive.run_dir), *argv]) == 2


def test_weight_noise_alone_through_the_engine(runs, tmp_path):
    _, repulsive, _ = runs
    out = tmp_path / "w"
    assert main(["uncertainty", "--checkpoint", str(repulsive.run_dir), "--weight-sigma", "0.5", "--sigma", "0",
                 "--repeats", "2", "--output", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert rows[1]["condition"] == "additive noise + weight 0.5"
    assert rows[1]["accuracy"] < rows[0]["accuracy"] and rows[1]["epistemic"] > rows[0]["epistemic"]


def test_repulsive_run_resumes_to_the_same_weights(tmp_path):
    straight = train(_config(tmp_path / "a", "r", epochs=2))
    train(_config(tmp_path / "b", "r", epochs=2), stop_after_epochs=1)
    resumed = train(_config(tmp_path / "b", "r", epochs=2))
    assert resumed.resumed_from == 1
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_annealed_repulsive_run_cannot_be_extended(tmp_path):
    annealed = {"name": "repulsive", "options": {"weight": 0.05, "schedule": "linear"}}
    train(_config(tmp_path, "lin", objective=annealed, epochs=1))
    with pytest.raises(NoraError, match="anneals over the whole training"):
        train(_config(tmp_path, "lin", objective=annealed, epochs=2), extend=True)
    train(_config(tmp_path, "const", epochs=1))
    assert train(_config(tmp_path, "const", epochs=2), extend=True).resumed_from == 1  # constant gamma: fine


def test_uncertainty_results_go_through_the_report_writer(runs, capsys):
    """Another question lands beside the first (never over it); the same question reuses its place;
    --json prints the result as one document."""
    _, _, single = runs
    base = ["uncertainty", "--checkpoint", str(single.run_dir), "--output", str(single.run_dir / "w")]
    assert main([*base, "--shift", "blur:1"]) == 0
    assert main([*base, "--shift", "blur:2"]) == 0
    first = json.loads((single.run_dir / "w" / "summary.json").read_text())
    second = json.loads((single.run_dir / "w-2" / "summary.json").read_text())
    assert [r["severity"] for r in first["rows"]] == [0, 1] and [r["severity"] for r in second["rows"]] == [0, 2]
    assert first["request"]["shifts"] == ["blur:1"] and first["weights_sha256"]
    capsys.readouterr()
    assert main([*base, "--shift", "blur:1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kind"] == "uncertainty" and printed["out"].endswith("w")
    assert not (single.run_dir / "w-3").exists()
