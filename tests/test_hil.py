"""Hardware in the loop: the shipped localhost executor end to end, and executors that misbehave."""

import sys
import textwrap

import pytest
import torch
from torch import nn

import nora.analog as A
from nora.analog.hil import HILConfig
from nora.errors import NoraError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 5))


def test_localhost_executor_matches_the_software_model_and_trains():
    model = _model()
    x = torch.rand(9, 1, 8, 8)
    with A.OrderedMACConfig(noise=0.0).attach(model.eval(), 0):
        software = model(x)
    att = A.hardware_from_dict({"kind": "hil", "timeout": 20}).attach(model.train(), 0)
    try:
        hardware = model(x)
        assert torch.equal(hardware.detach(), software)     # forward came from the other process
        hardware.sum().backward()                            # backward through the software model
        assert model[0].weight.grad.abs().sum() > 0
        assert att.describe()["kind"] == "hil"
    finally:
        att.detach()
    assert "forward" not in model[0].__dict__


def _script(tmp_path, body):
    path = tmp_path / "executor.py"
    path.write_text(textwrap.dedent("""
        import json, struct, sys, time
        import numpy as np

        def encode(header, arrays):  # the frame format of nora.analog.hil, written out (no torch import)
            specs = [{"name": k, "dtype": "float32", "shape": list(v.shape)} for k, v in arrays.items()]
            head = json.dumps({**header, "arrays": specs}).encode()
            return struct.pack(">I", len(head)) + head + b"".join(v.astype("<f4").tobytes() for v in arrays.values())

        size = struct.unpack(">I", sys.stdin.buffer.read(4))[0]
        header = json.loads(sys.stdin.buffer.read(size))
    """) + textwrap.dedent(body))
    return HILConfig(command=(sys.executable, str(path)), timeout=3.0)


@pytest.mark.parametrize("body, message", [
    ("time.sleep(30)\n", "did not answer for layer '0' within 3 s"),
    ("sys.stderr.write('driver lost the chip\\n'); sys.exit(3)\n", r"died \(exit code 3\).*driver lost the chip"),
    ("sys.stdout.buffer.write(encode({}, {'y': np.zeros((1, 2), np.float32)})); sys.stdout.flush(); time.sleep(5)\n",
     r"returned shape \(1, 2\) for layer '0'; expected \(4, 3\)"),
    ("sys.stdout.buffer.write(b'\\xff' * 64); sys.stdout.flush(); time.sleep(5)\n", "malformed reply"),
    ("sys.stdout.buffer.write(encode({'error': 'overheated'}, {})); sys.stdout.flush(); time.sleep(5)\n",
     "failed on layer '0': overheated"),
])
def test_misbehaving_executors_give_one_clear_error(tmp_path, body, message):
    layer = nn.Sequential(nn.Linear(6, 3))
    att = _script(tmp_path, body).attach(layer, 0)
    try:
        with pytest.raises(NoraError, match=message):
            layer(torch.rand(4, 6))
    finally:
        att.detach()


def test_executor_that_cannot_start_and_bad_config():
    with pytest.raises(NoraError, match="cannot start the hardware executor"):
        HILConfig(command=("/no/such/driver",)).attach(nn.Linear(2, 2), 0)
    with pytest.raises(NoraError, match="timeout"):
        HILConfig(timeout=0)
    with pytest.raises(NoraError, match="unknown analog preset"):
        HILConfig(backend={"preset": "nope"})


def test_localhost_executor_runs_a_tile_backend():
    model = _model().eval()
    x = torch.rand(4, 1, 8, 8)
    expected = model(x)
    with HILConfig(backend={"preset": "ideal"}, timeout=20).attach(model, 0):
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-5)
