import errno
import os
import subprocess
import sys

import pytest

import checkpoint
from helpers import BAD_CHECKPOINTS, fail_writes_with, valid_state, wrapped_fdopen
from model import Net


def expected():
    return Net().state_dict()


def test_round_trip(tmp_path):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    assert checkpoint.load(path, expected())["epoch"] == 1
    assert [p for p in os.listdir(tmp_path)] == ["ck.pth"]


@pytest.mark.parametrize(
    "make, message",
    [(m, msg) for _, m, msg in BAD_CHECKPOINTS],
    ids=[i for i, *_ in BAD_CHECKPOINTS],
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


def test_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    full = fail_writes_with(OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(checkpoint.os, "fdopen", wrapped_fdopen(full))
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        checkpoint.save(valid_state(), path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["ck.pth"]


@pytest.mark.slow
def test_process_killed_mid_save_leaves_the_old_file(tmp_path):
    """A real SIGKILL halfway through writing the temp file: the old checkpoint survives."""
    path = str(tmp_path / "ck.pth")
    checkpoint.save(valid_state(), path)
    before = open(path, "rb").read()
    script = (
        "import checkpoint, torch, helpers\n"
        "checkpoint.os.fdopen = helpers.wrapped_fdopen(helpers.die_halfway)\n"
        f"checkpoint.save({{'x': torch.zeros(3)}}, {path!r})\n"
    )
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env)
    assert proc.returncode == -9, proc.stderr
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
