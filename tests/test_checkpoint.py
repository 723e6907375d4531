"""Run files that lose nothing: weight checksums, the user's umask, and one writer per run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nora.errors import NoraError
from nora.io import LOCK_FILE, RunLock, atomic_write_bytes, atomic_write_json
from nora.models import build_model
from nora.train import checkpoint


def _save(run_dir):
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10)
    meta = checkpoint.save_model(run_dir, model, {"arch": model.arch, "arch_kwargs": model.arch_kwargs})
    return model, meta


def test_checksum_recorded_and_verified(tmp_path):
    model, meta = _save(tmp_path)
    on_disk = json.loads((tmp_path / "model.json").read_text())
    assert on_disk["weights_sha256"] == meta["weights_sha256"]
    import hashlib

    assert on_disk["weights_sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    loaded, _ = checkpoint.load_model(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_corrupted_weights_fail_with_one_line(tmp_path):
    model, _ = _save(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2  # inside the tensor bytes: safetensors itself parses this without complaint
    data[middle:middle + 100] = bytes((b + 1) % 256 for b in data[middle:middle + 100])
    weights.write_bytes(bytes(data))
    from safetensors.torch import load

    assert set(load(bytes(data))) == set(model.state_dict())  # the damage is invisible to the format
    with pytest.raises(NoraError) as info:
        checkpoint.load_model(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "corrupt" in message and "sha256" in message and str(weights) in message


def test_checkpoint_without_checksum_still_loads_and_bad_checksum_field_is_refused(tmp_path):
    _save(tmp_path)
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["weights_sha256"]
    meta_path.write_text(json.dumps(meta))
    checkpoint.load_model(tmp_path)  # written before checksums were recorded
    meta["weights_sha256"] = 12
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(NoraError, match="malformed weights_sha256"):
        checkpoint.load_model(tmp_path)


def test_missing_checkpoint_messages(tmp_path):
    with pytest.raises(NoraError, match=r"no checkpoint at .*nowhere: no such file or folder"):
        checkpoint.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoraError, match=r"no checkpoint at .*empty: model.safetensors not found there"):
        checkpoint.load_model(tmp_path / "empty")


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        _save(tmp_path / "a")
        atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    finally:
        os.umask(old)
    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "model.json", "x.json"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.bin").stat().st_mode & 0o777 == 0o600
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


_HOLD = textwrap.dedent("""
    import sys, time
    from nora.io import RunLock
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_run_lock_refuses_a_second_process_and_names_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = _holder(run_dir)
    try:
        with pytest.raises(NoraError) as info:
            with RunLock(run_dir):
                pass
        assert str(info.value).startswith(f"run folder {run_dir} is in use by process {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    # The kernel drops the lock with the killed process: no stale lock to clear by hand.
    with RunLock(run_dir):
        assert (run_dir / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (run_dir / LOCK_FILE).exists()


def test_run_lock_nests_within_a_process_and_is_per_folder(tmp_path):
    with RunLock(tmp_path / "a"):
        with RunLock(tmp_path / "a"), RunLock(tmp_path / "b"):
            pass
        assert (tmp_path / "a" / LOCK_FILE).exists()  # still held by the outer block
        code = f"from nora.io import RunLock\nwith RunLock({str(tmp_path / 'a')!r}): pass"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode != 0 and "is in use by process" in result.stderr
    assert not (tmp_path / "a" / LOCK_FILE).exists()


@pytest.mark.slow
def test_run_lock_many_contenders_one_winner(tmp_path):
    """Processes racing for one folder: at every moment at most one holds it."""
    code = textwrap.dedent(f"""
        import sys, time, os
        from nora.errors import NoraError
        from nora.io import RunLock
        wins = 0
        deadline = time.time() + 1.5
        while time.time() < deadline:
            try:
                with RunLock({str(tmp_path / 'run')!r}):
                    marker = {str(tmp_path / 'inside')!r}
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
                    os.close(fd)
                    time.sleep(0.002)
                    os.unlink(marker)
                    wins += 1
            except NoraError:
                pass
        print(wins)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-300:] for _, err in outs]
    assert sum(int(out) for out, _ in outs) > 0


def test_a_forked_child_does_not_inherit_the_hold(tmp_path):
    """A worker forked while the parent holds the folder is another process: it is refused, and its
    exit leaves the parent's lock in place."""
    with RunLock(tmp_path / "run"):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                with RunLock(tmp_path / "run"):
                    os.write(write, b"entered")
            except NoraError as exc:
                os.write(write, str(exc).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        os.close(write)
        message = os.read(read, 1000).decode()
        os.close(read)
        assert f"is in use by process {os.getpid()}" in message
        assert (tmp_path / "run" / LOCK_FILE).exists()
