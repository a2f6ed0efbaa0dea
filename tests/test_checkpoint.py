import errno
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
from model import Net


def valid_state():
    net = Net()
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "model": "Net",
        "model_state": net.state_dict(),
        "optimizer_state": torch.optim.SGD(net.parameters(), lr=0.1).state_dict(),
        "epoch": 1,
        "step": 0,
        "batches_per_epoch": 10,
        "seed": 1,
        "args": {"batch_size": 64},
        "metrics": [],
    }


def expected():
    return Net().state_dict()


def test_round_trip(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    assert checkpoint.load(path, expected())["epoch"] == 1
    assert [p for p in os.listdir(tmp_path)] == ["ck.pth"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: open(p, "wb").write(b"garbage" * 100), "not a readable checkpoint"),
        (lambda p: open(p, "wb").write(b""), "not a readable checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "not a mnist-hogwild checkpoint"),
        (lambda p: torch.save({**valid_state(), "format_version": 99}, p), "newer than"),
        (lambda p: torch.save({"format_version": 1, "model": "Net"}, p), "incomplete"),
        (
            lambda p: torch.save(
                {**valid_state(), "model_state": torch.nn.Linear(2, 2).state_dict()}, p
            ),
            "different model",
        ),
    ],
)
def test_bad_checkpoints_are_refused_with_one_line(tmp_path, make, message):
    path = str(tmp_path / "ck.pth")
    make(path)
    before = open(path, "rb").read()
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        checkpoint.load(path, expected())
    assert "\n" not in str(err.value)
    assert open(path, "rb").read() == before


def test_truncated_checkpoint_is_refused(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    payload = open(path, "rb").read()
    open(path, "wb").write(payload[: len(payload) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(path, expected())


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "ck.pth")
    torch.save({**valid_state(), "evil": RunsCode()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="could run code"):
        checkpoint.load(path, expected())
    assert not os.path.exists(tmp_path / "PWNED")


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        checkpoint.save(valid_state(), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ck.pth"]


def test_process_killed_mid_save_leaves_the_old_file(tmp_path):
    """A real SIGKILL halfway through writing the temp file: the old checkpoint survives."""
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    script = f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
import checkpoint, torch
real_fdopen = os.fdopen
class Dying:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()
checkpoint.os.fdopen = lambda fd, mode: Dying(real_fdopen(fd, mode))
checkpoint.save({{"x": torch.zeros(3)}}, {path!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert open(path, "rb").read() == before
    stale = checkpoint.remove_stale_temps(path)
    assert len(stale) == 1 and os.listdir(tmp_path) == ["ck.pth"]


def test_unwritable_directory_fails_fast(tmp_path):
    # A file where the directory should be: unwritable for root too (tests run as root in CI;
    # the container tests cover a read-only volume and a foreign uid).
    (tmp_path / "blocker").write_text("")
    with pytest.raises(checkpoint.CheckpointError, match="cannot write checkpoints"):
        checkpoint.check_writable(str(tmp_path / "blocker" / "ck.pth"))


def test_checkpoint_path_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="is a directory"):
        checkpoint.check_writable(str(tmp_path))
