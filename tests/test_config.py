"""Configs are validated on load: unknown keys and bad values give one clear line."""

import pytest

from nora.config import apply_overrides, config_keys, load_config, parse_config
from nora.errors import NoraError

EXAMPLES = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def _load_example(path):
    """Each example through the loader of its kind: sweep, trajectory, hardware model or run config."""
    import yaml

    data = yaml.safe_load(path.read_text())
    if "grid" in data:
        from nora.sweep import load_sweep

        return load_sweep(path)[1].model.arch
    if "process" in data:
        from nora.dynamic import load_trajectory

        return load_trajectory(path).name
    if "agent" in data and "target" in data:
        from nora.compress.search import SearchSettings
        from nora.compress.workflow import read_settings_file

        return SearchSettings(**read_settings_file(path)).agent
    if set(data) <= {"hardware"} or "preset" in data or (set(data) and "kind" in data and "model" not in data):
        from nora.sim.spec import hardware_from_dict

        return hardware_from_dict(data.get("hardware", data)).to_dict()["kind"]
    return load_config(path).model.arch


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    assert _load_example(path)


@pytest.mark.parametrize(
    "data,message",
    [
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"train_noise": {"sigma": -0.1}}, "sigma must be a finite number >= 0"),
        ({"train_noise": {"sigma": float("nan")}}, "sigma must be a finite number >= 0"),
        ({"train_noise": {"sigma": float("inf")}}, "sigma must be a finite number >= 0"),
        ({"train_noise": {"kind": "pink"}}, "train_noise.kind"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"eval": {"sigmas": [0.1, -1]}}, "every evaluation sigma"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_configs(data, message):
    with pytest.raises(NoraError, match=message):
        parse_config(data)


def test_yaml_errors_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(NoraError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(NoraError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_are_validated():
    config = parse_config({})
    assert apply_overrides(config, {"train.epochs": 7}).train.epochs == 7
    with pytest.raises(NoraError, match="unknown key 'train.epochz'"):
        apply_overrides(config, {"train.epochz": 7})
    with pytest.raises(NoraError, match="unknown key 'nope.x'"):
        apply_overrides(config, {"nope.x": 1})


def test_config_keys_cover_nested_sections():
    keys = config_keys()
    assert {"train.epochs", "train_noise.sigma", "train_noise.weight.sigma", "data.root", "eval.repeats"} <= set(keys)
