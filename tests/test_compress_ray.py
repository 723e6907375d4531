"""Compression candidates evaluated as Ray tasks give exactly the numbers of the local fork pool and of
sequential evaluation, and a search stopped on one engine continues on another.

Latency comes from the deterministic bit-operations model here, so whole episode records can be
compared; with measured latency only the timings would differ. One local Ray instance (2 CPUs)
serves the module. Forking a process that runs a Ray driver is unsafe, so every fork-pool run
happens in ``local_runs``, before Ray starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")
pytest.importorskip("ray")

from nora.cli import main  # noqa: E402
from nora.compress.workflow import compress, resume  # noqa: E402
from nora.errors import NoraError  # noqa: E402

SEARCH = dict(agent="ddpg", episodes=6, batch=2, ddpg_warmup=2, backend="bitops", eval_samples=120,
              sensitivity_samples=32, retrain_epochs=0, timing_repeats=2)
#: Everything an episode record holds that does not depend on the clock.
DETERMINISTIC = ("episode", "accuracy", "latency_s", "latency_ratio", "reward", "policy", "actions", "kernels",
                 "estimated_layers", "failures")
TIMINGS = ("retrain_s", "search_s", "cache_hit_rate")


def _episodes(folder) -> list[dict]:
    rows = json.loads((Path(folder) / "episodes.json").read_text())
    return [{k: e[k] for k in DETERMINISTIC} for e in rows]


def _final(result: dict) -> dict:
    return {k: v for k, v in result["final"].items() if k not in TIMINGS}


@pytest.fixture(scope="module")
def checkpoint(digits_lenet5_run):
    return digits_lenet5_run


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, checkpoint):
    """Whole searches in this process and on a 2-process fork pool."""
    root = tmp_path_factory.mktemp("local")
    sequential = compress(checkpoint, root / "sequential", engine="sequential", **SEARCH)
    pool = compress(checkpoint, root / "pool", engine="local", workers=2, **SEARCH)
    return {"root": root, "sequential": sequential, "pool": pool}


@pytest.fixture(scope="module")
def ray_instance(local_runs):
    import ray

    from nora.sweep.ray_executor import LOCAL_SYSTEM_CONFIG

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=LOCAL_SYSTEM_CONFIG)
    yield ray
    ray.shutdown()


def test_an_unreachable_ray_cluster_is_one_error_line_and_writes_nothing(tmp_path, checkpoint, capsys, monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray instance of another test is running in this process: nora would use it")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(["compress", "--checkpoint", checkpoint, "--engine", "ray", "--address", "127.0.0.1:1", "--workers",
                 "2", "--batch", "2", "--backend", "bitops"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: cannot reach the Ray cluster at 127.0.0.1:1"), err
    assert list(tmp_path.iterdir()) == []  # not even the default runs/compress-... folder
    assert not ray.is_initialized()


def test_bad_engine_settings_are_one_clear_error(tmp_path, checkpoint, local_runs, capsys):
    with pytest.raises(NoraError, match="unknown engine 'dask'"):
        compress(checkpoint, tmp_path / "s", engine="dask", **SEARCH)
    with pytest.raises(NoraError, match=r"--address is for the Ray engine"):
        compress(checkpoint, tmp_path / "s", engine="local", address="127.0.0.1:6379", **SEARCH)
    assert not (tmp_path / "s").exists()
    # a resumed search may change how it runs, never what it is
    folder = local_runs["root"] / "sequential"
    with pytest.raises(NoraError, match="only engine, address, workers may change, not 'episodes'"):
        resume(folder, episodes=9)
    before = (folder / "episodes.json").read_text()
    capsys.readouterr()
    assert main(["compress", "--resume", str(folder), "--episodes", "9"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --resume continues the folder's own search; --episodes cannot "
                                               "change it (only --engine, --address and --workers can)")
    assert (folder / "episodes.json").read_text() == before


def test_local_pool_gives_the_numbers_of_this_process(local_runs):
    root = local_runs["root"]
    episodes = _episodes(root / "sequential")
    # a trained model whose candidates differ: equal records are not equal by accident
    assert local_runs["sequential"]["reference"]["accuracy"] > 0.8
    assert len({e["accuracy"] for e in episodes}) >= 3 and len({e["latency_s"] for e in episodes}) >= 3
    assert len(episodes) == SEARCH["episodes"] and _episodes(root / "pool") == episodes
    assert _final(local_runs["pool"]) == _final(local_runs["sequential"])
    assert local_runs["pool"]["execution"]["engine"] == "local"
    assert local_runs["sequential"]["execution"]["engine"] == "sequential"


@pytest.mark.slow
@pytest.mark.ray
def test_ray_gives_the_numbers_of_the_local_pool_and_of_this_process(tmp_path, checkpoint, local_runs,
                                                                        ray_instance):
    on_ray = compress(checkpoint, tmp_path / "ray", engine="ray", workers=2, **SEARCH)
    assert on_ray["execution"]["engine"] == "ray"
    assert _episodes(tmp_path / "ray") == _episodes(local_runs["root"] / "sequential")
    assert _final(on_ray) == _final(local_runs["sequential"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_search_stopped_on_ray_continues_in_this_process(tmp_path, checkpoint, local_runs, ray_instance):
    part = compress(checkpoint, tmp_path / "s", engine="ray", workers=2, stop_after=2, **SEARCH)
    assert part["episodes"] == 2 and len(_episodes(tmp_path / "s")) == 2
    # the same call with another engine continues the folder (the engine is not part of what a search is)
    finished = compress(checkpoint, tmp_path / "s", engine="sequential", **SEARCH)
    assert finished["execution"]["engine"] == "sequential"
    assert _episodes(tmp_path / "s") == _episodes(local_runs["root"] / "sequential")
    assert _final(finished) == _final(local_runs["sequential"])


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_search_continues_on_another_engine(tmp_path, checkpoint, ray_instance, killed_search):
    """A real SIGKILL of ``nora compress --engine local --workers 2`` part-way; ``--resume --engine ray``
    finishes it with exactly the episodes of an uninterrupted search in one process."""
    flags = ["--checkpoint", checkpoint, "--agent", "ddpg", "--episodes", "40", "--batch", "2", "--ddpg-warmup", "4",
             "--backend", "bitops", "--eval-samples", "120", "--sensitivity-samples", "32", "--retrain-epochs", "0"]
    killed = tmp_path / "killed"
    done = killed_search([*flags, "--engine", "local", "--workers", "2"], killed)
    assert 0 < done < 40, "the search should have been killed part-way"
    assert main(["compress", "--resume", str(killed), "--engine", "ray", "--workers", "2"]) == 0
    assert json.loads((killed / "result.json").read_text())["execution"]["engine"] == "ray"
    assert main(["compress", *flags, "--engine", "sequential", "--out", str(tmp_path / "whole")]) == 0
    assert _episodes(killed) == _episodes(tmp_path / "whole")


MODEL_FILE = """
from torch import nn


class Small(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear(8 * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        return self.fc(self.features(x))
"""


@pytest.mark.slow
@pytest.mark.ray
def test_a_model_from_a_file_reaches_the_ray_workers(tmp_path, ray_instance):
    """``model.arch: path/to/file.py:Factory`` is no importable module in a Ray worker: it goes by value."""
    from nora.config import parse_config
    from nora.train import train

    (tmp_path / "own_model.py").write_text(MODEL_FILE)
    config = parse_config({"name": "own", "output_dir": str(tmp_path), "data": {"dataset": "digits", "batch_size": 64},
                           "model": {"arch": f"{tmp_path / 'own_model.py'}:Small"}, "train": {"epochs": 1}})
    train(config)
    options = dict(SEARCH, episodes=2)
    compress(str(tmp_path / "own"), tmp_path / "ray", engine="ray", workers=2, **options)
    compress(str(tmp_path / "own"), tmp_path / "here", engine="sequential", **options)
    assert _episodes(tmp_path / "ray") == _episodes(tmp_path / "here")
